//! Triggers: what starts a unit's run. A barcode scan on the fixture's scanner port, the web
//! scan box, or the command line; all go through the same parser.

pub mod parse;
pub mod scanner;
