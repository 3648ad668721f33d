//! `station check`

use std::process::ExitCode;

use super::{CliError, Context};
use crate::check;

pub(super) fn run(ctx: &Context) -> Result<ExitCode, CliError> {
    let report = check::run_all(&ctx.home);
    print!("{report}");
    let (fails, warns) = (report.failures(), report.warnings());
    if fails > 0 {
        println!("{fails} check(s) failed, {warns} warning(s)");
        Ok(ExitCode::from(1))
    } else {
        println!("all checks passed, {warns} warning(s)");
        Ok(ExitCode::SUCCESS)
    }
}
