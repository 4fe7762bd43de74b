//! `flagstaff serve --config FILE`: a TOML file of `serve` options, for a service manager.
//!
//! Each key is a `serve` option's long name without the dashes (`listen-client`,
//! `max-staleness-ms`, …), each value a string, number or boolean. Precedence, highest first:
//! the command line, the option's `FLAGSTAFF_*` variable, the file, the built-in default. An
//! unknown key is an error naming the file and the key, so a typo never passes silently.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::parser::ValueSource;
use clap::CommandFactory;

/// `argv` with the options of `serve --config FILE` that neither the command line nor the
/// environment set appended as `--key=value`; `argv` itself for any other command. A command
/// line that does not parse is returned unchanged, for clap to report.
pub fn expand(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    // Lenient: the options the file provides are still missing from the command line.
    let lenient = crate::Cli::command().ignore_errors(true);
    let Ok(matches) = lenient.try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(path) = serve.get_one::<PathBuf>("config").cloned() else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading --config {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let cli = crate::Cli::command();
    let serve_cmd = cli
        .find_subcommand("serve")
        .ok_or_else(|| anyhow!("no serve command"))?;
    let mut out = argv;
    for (key, value) in table {
        // `serve`'s own options, and the global ones (`log-format`).
        let arg = serve_cmd
            .get_arguments()
            .chain(cli.get_arguments())
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| {
                anyhow!(
                    "{}: unknown option {key:?} (keys are `flagstaff serve` options without the \
                     leading dashes, e.g. listen-client)",
                    path.display()
                )
            })?;
        let set_elsewhere = matches!(
            serve.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if set_elsewhere {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "{}: {key} must be a string, a number or a boolean, not {}",
                path.display(),
                other.type_str()
            ),
        };
        out.push(format!("--{key}={value}").into());
    }
    Ok(out)
}
