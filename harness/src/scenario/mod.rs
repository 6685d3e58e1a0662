//! Scenario files (tests/conformance/FORMAT.md): their YAML shape
//! (`format`), parsing and validation with errors that name the file and the
//! key (`parse`), the validated scenario the runner uses (`spec`), and
//! placeholder substitution in manifests (`placeholders`).

mod format;
mod parse;
mod placeholders;
mod spec;

pub use self::parse::{collect_files, load, parse};
pub use self::placeholders::{substitute, substitute_str, Placeholder};
pub use self::spec::{policy_key, Expectation, PolicyRef, Scenario, Step};

#[cfg(test)]
mod tests;
