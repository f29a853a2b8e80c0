//! Reports: the human table (`table`) and JSON Lines (`json`).
pub mod json;
pub mod table;
