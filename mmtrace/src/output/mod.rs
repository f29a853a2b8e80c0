//! Reports: the human table and JSON Lines.
