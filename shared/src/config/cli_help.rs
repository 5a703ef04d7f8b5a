//! What `--help` shows, and README.md's "## Commands" section held to the
//! commands the binaries declare.
use super::ENV_ONLY_HEADING;

/// `cmd` with its environment-only arguments (those under
/// [`ENV_ONLY_HEADING`], which [`super::matches_from`] refuses on the command
/// line) shown as variables under that heading after the options, instead of
/// as options: help never offers a flag the binary refuses.
pub fn env_only_as_variables(cmd: clap::Command) -> clap::Command {
    let env_only: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.get_help_heading() == Some(ENV_ONLY_HEADING))
        .filter_map(|a| {
            let name = a.get_env()?.to_string_lossy().into_owned();
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let default = a.get_default_values().first().map(|d| format!(" [default: {}]", d.to_string_lossy()));
            Some(format!("  {name}\n          {help}{}", default.unwrap_or_default()))
        })
        .collect();
    if env_only.is_empty() {
        return cmd;
    }
    let mut after = format!("{ENV_ONLY_HEADING}:\n{}", env_only.join("\n"));
    if let Some(note) = cmd.get_after_help() {
        after = format!("{after}\n\n{note}");
    }
    cmd.mut_args(|a| if a.get_help_heading() == Some(ENV_ONLY_HEADING) { a.hide(true) } else { a }).after_help(after)
}

/// Every command path `cmd` declares down to a leaf (`["jobs", "run-once"]`;
/// one empty path for a binary without subcommands), clap's own `help`
/// subcommand left out.
pub fn command_paths(cmd: &clap::Command) -> Vec<Vec<String>> {
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| s.get_name() != "help" && !s.is_hide_set()).collect();
    if subs.is_empty() {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for sub in subs {
        for mut path in command_paths(sub) {
            path.insert(0, sub.get_name().to_owned());
            out.push(path);
        }
    }
    out
}

/// The words of a README line: runs of letters, digits, `-` and `_`.
fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).filter(|w| !w.is_empty()).collect()
}

/// The command lines of README.md's "## Commands" section for `binary`:
/// each `cargo run --release -q --bin <binary> [-- <command>... <options>]`
/// line, as (the command path, what follows `--`, the whole line).
fn readme_commands<'a>(readme: &'a str, binary: &str) -> Vec<(Vec<String>, &'a str, &'a str)> {
    let prefix = format!("cargo run --release -q --bin {binary}");
    readme
        .lines()
        .skip_while(|l| !l.starts_with("## Commands"))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .map(str::trim)
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            if !(rest.is_empty() || rest.starts_with(' ')) {
                return None;
            }
            let rest = rest.trim_start();
            let Some(args) = rest.strip_prefix("-- ").or(rest.strip_prefix("--").filter(|r| r.is_empty())) else {
                // Anything but `-- ...` after the binary is no command of it.
                return Some((if rest.is_empty() { Vec::new() } else { vec![rest.to_owned()] }, rest, l));
            };
            let path = args
                .split_whitespace()
                .take_while(|w| w.starts_with(|c: char| c.is_ascii_lowercase()))
                .map(str::to_owned)
                .collect();
            Some((path, args, l))
        })
        .collect()
}

/// Checks README.md's "## Commands" section against `cmd` (the binary
/// `binary`): every command path it declares has a line there, every line
/// there names a declared path and only its declared options, and a line
/// of each path lists every possible value of its arguments (jobs,
/// scenarios...). Returns the disagreements. A line is
/// `cargo run --release -q --bin <binary> -- <command>... <options>`.
pub fn check_commands_section(readme: &str, binary: &str, cmd: &clap::Command) -> Vec<String> {
    let mut problems = Vec::new();
    let mut cmd = cmd.clone();
    cmd.build();
    let declared = command_paths(&cmd);
    let lines = readme_commands(readme, binary);
    for path in &declared {
        let shown = format!("{binary} {}", path.join(" ")).trim_end().to_owned();
        let mine: Vec<&str> = lines.iter().filter(|(p, ..)| p == path).map(|(_, args, _)| *args).collect();
        if mine.is_empty() {
            problems.push(format!("{shown}: declared, but README's Commands section has no line for it"));
            continue;
        }
        let mut leaf = &cmd;
        let mut longs: Vec<String> = leaf.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
        for name in path {
            if let Some(sub) = leaf.find_subcommand(name) {
                leaf = sub;
                longs.extend(leaf.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")));
            }
        }
        for line in &mine {
            for w in words(line).into_iter().filter(|w| w.starts_with("--") && w.len() > 2) {
                if !longs.iter().any(|l| l == w) {
                    problems.push(format!("{shown}: README's line gives {w}, which it does not declare"));
                }
            }
        }
        for a in leaf.get_arguments().filter(|a| a.get_action().takes_values() && !a.is_hide_set()) {
            for v in a.get_possible_values().iter().filter(|v| !v.is_hide_set()) {
                if !mine.iter().any(|l| words(l).contains(&v.get_name())) {
                    problems.push(format!("{shown}: README's line does not list {} value {:?}", a.get_id(), v.get_name()));
                }
            }
        }
    }
    for (path, _, line) in &lines {
        if !declared.contains(path) {
            problems.push(format!("README's Commands section gives `{line}`, a command {binary} does not declare"));
        }
    }
    problems
}

/// Checks that `cmd`'s help says something about everything: each
/// subcommand has an about line, each argument a help text, and each
/// possible value of an argument appears in its subcommand's `--help`.
/// Returns what is missing.
pub fn check_help_complete(cmd: &clap::Command) -> Vec<String> {
    fn check(cmd: &mut clap::Command, path: &str, problems: &mut Vec<String>) {
        if cmd.get_about().is_none_or(|a| a.to_string().trim().is_empty()) {
            problems.push(format!("{path}: no about line"));
        }
        let help = cmd.render_long_help().to_string();
        for a in cmd.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
            let text = a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_default();
            if text.trim().is_empty() {
                problems.push(format!("{path}: {} has no help", a.get_id()));
            }
            if !a.get_action().takes_values() || a.is_hide_set() {
                continue;
            }
            for v in a.get_possible_values().iter().filter(|v| !v.is_hide_set()) {
                if !help.contains(v.get_name()) {
                    problems.push(format!("{path}: {} value {:?} is not in --help", a.get_id(), v.get_name()));
                }
            }
        }
        for sub in cmd.get_subcommands_mut().filter(|s| s.get_name() != "help") {
            let path = format!("{path} {}", sub.get_name());
            check(sub, &path, problems);
        }
    }
    let mut cmd = env_only_as_variables(cmd.clone());
    cmd.build();
    let mut problems = Vec::new();
    let name = cmd.get_name().to_owned();
    check(&mut cmd, &name, &mut problems);
    problems
}

#[cfg(test)]
mod tests {
    use clap::Args;

    use super::*;
    use crate::config::TelemetryArgs;

    #[test]
    fn environment_only_variables_are_shown_as_variables_not_options() {
        let cmd = env_only_as_variables(TelemetryArgs::augment_args(clap::Command::new("t")).after_help("note"));
        let help = cmd.clone().render_long_help().to_string();
        assert!(help.contains(&format!("{ENV_ONLY_HEADING}:\n  LOG_FORMAT\n")), "{help}");
        assert!(help.contains("  RUST_LOG\n") && !help.contains("--rust-log"), "{help}");
        assert!(help.trim_end().ends_with("note"), "{help}");
        // Still declared, so still refused on the command line.
        assert!(crate::config::matches_from(cmd, ["t", "--rust-log", "debug"]).is_err());
    }

    #[test]
    fn readme_commands_are_matched_to_declared_paths_and_values() {
        #[derive(Clone, Copy, clap::ValueEnum)]
        enum Job {
            /// One.
            One,
            /// Two.
            Two,
        }
        let cmd =
            clap::Command::new("b")
                .subcommand(clap::Command::new("serve"))
                .subcommand(clap::Command::new("jobs").subcommand(
                    clap::Command::new("run-once").arg(clap::Arg::new("job").value_parser(clap::value_parser!(Job))),
                ));
        let good = "## Commands\n```\ncargo run --release -q --bin b -- serve\n\
                    cargo run --release -q --bin b -- jobs run-once <one|two>\n```\n## Next\n";
        assert_eq!(check_commands_section(good, "b", &cmd), Vec::<String>::new());
        let bad = "## Commands\ncargo run --release -q --bin b -- jobs run-once <one> --fast\n\
                   cargo run --release -q --bin b -- stop\n## Next\ncargo run --release -q --bin b -- serve\n";
        let problems = check_commands_section(bad, "b", &cmd);
        assert_eq!(problems.len(), 4, "{problems:#?}");
    }
}
