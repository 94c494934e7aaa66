//! `serve --config bulkfhir.toml`: a configuration file with the same keys as `serve`'s flags
//! (`listen = "0.0.0.0:8080"`, `max-running-exports = 4`, `allowed-hosts = ["a", "b"]`; `_`
//! and `-` are the same in keys), and `bulkfhir config check FILE`.
//!
//! Precedence is flags > environment > file > defaults. The file is read before the command
//! line is parsed, and each of its keys becomes the key's environment variable
//! (`BULKFHIR_...`) unless that is already set; clap then applies its own order (a flag beats
//! its environment variable, which beats the default). The keys, their variables and their
//! value checks all come from the clap definition of `serve`, so the file can never drift from
//! the flags.

use std::path::Path;

use clap::CommandFactory;
use toml::de::{DeTable, DeValue};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) line: usize,
    pub(crate) message: String,
}

/// A checked configuration file: `(environment variable, value)` for each key.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    pub(crate) variables: Vec<(String, String)>,
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// The keys `serve` takes (its own and the global ones), as (long flag, environment variable).
fn serve_keys<C: CommandFactory>() -> Vec<(String, Option<String>)> {
    let command = C::command();
    let Some(serve) = command.find_subcommand("serve") else { return Vec::new() };
    // Global flags (`--log-format`) and `serve`'s own.
    command
        .get_arguments()
        .chain(serve.get_arguments())
        .filter_map(|arg| {
            let long = arg.get_long()?.to_owned();
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            Some((long, env))
        })
        .filter(|(long, _)| long != "help" && long != "config")
        .collect()
}

/// A TOML value as the text a flag takes.
fn flag_text(value: &DeValue<'_>) -> Result<String, String> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(n) if n.radix() == 10 => Ok(n.as_str().to_owned()),
        DeValue::Integer(_) => Err("write integers in decimal".to_owned()),
        DeValue::Float(f) => Ok(f.as_str().to_owned()),
        DeValue::Boolean(b) => Ok(b.to_string()),
        DeValue::Array(items) => items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) => Ok(s.to_string()),
                _ => Err("a list holds strings only".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        DeValue::Datetime(_) => Err("a date is not a value of any setting".to_owned()),
        DeValue::Table(_) => Err("settings are top-level keys; tables are not used".to_owned()),
    }
}

/// Reads and checks `text` against the flags of `C`'s `serve`: every unknown key, every value
/// the flag would refuse, a key whose partner is missing (`tls-cert` without `tls-key`, unless
/// the environment has it), and TOML syntax errors, each with its line.
pub(crate) fn check<C: CommandFactory>(text: &str) -> Result<Settings, Vec<Problem>> {
    check_keys::<C>(text, true)
}

/// [`check`]; with `whole` false, a key whose partner is missing is let through (the partner may
/// be a flag on the command line, which the final parse sees and checks).
fn check_keys<C: CommandFactory>(text: &str, whole: bool) -> Result<Settings, Vec<Problem>> {
    let table = DeTable::parse(text).map_err(|error| {
        let line = error.span().map_or(1, |span| line_of(text, span.start));
        vec![Problem { line, message: format!("not valid TOML: {}", error.message()) }]
    })?;
    let keys = serve_keys::<C>();
    let mut problems = Vec::new();
    let mut settings = Settings::default();
    // Keys that need another key (clap `requires`), checked once all keys are known.
    let mut needs_partner = Vec::new();
    let mut all_flags = vec!["bulkfhir".to_owned(), "serve".to_owned()];
    for (key, value) in table.get_ref() {
        let line = line_of(text, key.span().start);
        let name = key.get_ref().replace('_', "-");
        let Some((long, env)) = keys.iter().find(|(long, _)| *long == name) else {
            let known: Vec<&str> = keys.iter().map(|(long, _)| long.as_str()).collect();
            problems.push(Problem {
                line,
                message: format!("unknown key '{}' (known: {})", key.get_ref(), known.join(", ")),
            });
            continue;
        };
        let text_value = match flag_text(value.get_ref()) {
            Ok(text_value) => text_value,
            Err(message) => {
                problems.push(Problem { line, message: format!("'{name}': {message}") });
                continue;
            }
        };
        // The flag's own parser decides whether the value is valid.
        let flag = format!("--{long}={text_value}");
        let args = ["bulkfhir".to_owned(), "serve".to_owned(), flag.clone()];
        if let Err(error) = C::command().try_get_matches_from(args) {
            let message = format!("'{name}': {}", first_paragraph(&error));
            if error.kind() != clap::error::ErrorKind::MissingRequiredArgument {
                problems.push(Problem { line, message });
                continue;
            }
            // Alone it lacks its partner; the file may hold that too.
            needs_partner.push(Problem { line, message });
        }
        all_flags.push(flag);
        match env {
            Some(env) => settings.variables.push((env.clone(), text_value)),
            None => problems.push(Problem {
                line,
                message: format!("'{name}' cannot be set from a file; pass --{long}"),
            }),
        }
    }
    if whole
        && !needs_partner.is_empty()
        && C::command()
            .try_get_matches_from(all_flags)
            .is_err_and(|error| error.kind() == clap::error::ErrorKind::MissingRequiredArgument)
    {
        problems.extend(needs_partner);
    }
    problems.sort_by_key(|p| p.line);
    if problems.is_empty() { Ok(settings) } else { Err(problems) }
}

/// A clap error's message up to its first blank line, on one line, without `error: `.
fn first_paragraph(error: &clap::Error) -> String {
    let text = error.to_string();
    let lines: Vec<&str> =
        text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    lines.join(" ").trim_start_matches("error: ").to_owned()
}

/// Reads the file and sets each key's environment variable unless the environment has it.
///
/// # Safety
/// Sets environment variables: call it before any other thread starts.
pub(crate) unsafe fn apply<C: CommandFactory>(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
    let settings = check_keys::<C>(&text, false).map_err(|problems| {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{}:{}: {}", path.display(), p.line, p.message))
            .collect();
        lines.join("\n")
    })?;
    for (variable, value) in settings.variables {
        if std::env::var_os(&variable).is_none() {
            // SAFETY: the caller guarantees no other thread runs yet.
            unsafe { std::env::set_var(variable, value) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{Args, Parser, Subcommand};

    use super::*;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[arg(long, global = true, env = "T_LOG", default_value = "text")]
        log_format: String,
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Subcommand, Debug)]
    enum TestCommand {
        Serve(TestServe),
    }

    #[derive(Args, Debug)]
    struct TestServe {
        #[arg(long, env = "T_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, env = "T_RUNNING", default_value_t = 2)]
        max_running_exports: usize,
        #[arg(long, env = "T_HOSTS", value_delimiter = ',')]
        allowed_hosts: Vec<String>,
        #[arg(long)]
        no_env: Option<u32>,
        #[arg(long, env = "T_CERT", requires = "key")]
        cert: Option<std::path::PathBuf>,
        #[arg(long, env = "T_KEY", requires = "cert")]
        key: Option<std::path::PathBuf>,
    }

    #[test]
    fn files_map_to_environment_variables_and_problems_name_their_lines() {
        let good = "listen = \"0.0.0.0:9000\"\nmax_running_exports = 4\nallowed-hosts = [\"a.example\", \"b.example:8443\"]\nlog-format = \"json\"\n";
        let mut variables = check::<TestCli>(good).unwrap().variables;
        variables.sort();
        assert_eq!(
            variables,
            [
                ("T_HOSTS".to_owned(), "a.example,b.example:8443".to_owned()),
                ("T_LISTEN".to_owned(), "0.0.0.0:9000".to_owned()),
                ("T_LOG".to_owned(), "json".to_owned()),
                ("T_RUNNING".to_owned(), "4".to_owned()),
            ]
        );
        let bad = "# comment\nlisten = \"not an address\"\nmax-running-exports = -3\nnope = 1\nno-env = 5\n[table]\nx = 1\n";
        let problems = check::<TestCli>(bad).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6], "{problems:?}");
        assert!(problems[0].message.contains("listen"), "{problems:?}");
        assert!(problems[2].message.contains("unknown key 'nope'"), "{problems:?}");
        assert!(problems[3].message.contains("cannot be set from a file"), "{problems:?}");
        let syntax = check::<TestCli>("listen = \n\"x\"").unwrap_err();
        assert_eq!(syntax.len(), 1);
        assert!(syntax[0].message.starts_with("not valid TOML"), "{syntax:?}");
    }

    #[test]
    fn keys_that_need_each_other_are_checked_together() {
        let both = "cert = \"/etc/tls/cert.pem\"\nkey = \"/etc/tls/key.pem\"\n";
        let mut variables = check::<TestCli>(both).unwrap().variables;
        variables.sort();
        assert_eq!(
            variables,
            [
                ("T_CERT".to_owned(), "/etc/tls/cert.pem".to_owned()),
                ("T_KEY".to_owned(), "/etc/tls/key.pem".to_owned()),
            ]
        );
        let alone = "listen = \"127.0.0.1:1\"\ncert = \"cert.pem\"\n";
        let problems = check::<TestCli>(alone).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, 2);
        assert!(problems[0].message.contains("--key"), "{problems:?}");
        // When serving, the partner may still come as a flag: the final parse checks it.
        assert!(check_keys::<TestCli>(alone, false).is_ok());
    }
}
