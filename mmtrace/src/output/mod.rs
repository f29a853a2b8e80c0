//! Reports: the human table (`table`) and JSON Lines (`json`); `escape`
//! makes names from the traced system safe to print.
pub mod escape;
pub mod json;
pub mod table;
