//! `melo deidentify IN… --out DIR` (the `Command` variant in `crate::cli` only forwards here).

use std::path::{Path, PathBuf};

use clap::Args;

use super::{collect_files, export_files, Error, Options, Result};

/// `melo deidentify IN… --out DIR [--retain-dates]`
#[derive(Debug, Args)]
pub struct DeidentifyArgs {
    /// DICOM files or folders (searched recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Folder for the de-identified copies (created if missing), named by their new SOP
    /// Instance UIDs. Never inside an input folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep dates and times (PS3.15 Retain Longitudinal Temporal Information with Full Dates
    /// option); the patient's birth date is removed all the same.
    #[arg(long)]
    pub retain_dates: bool,
}

pub fn run(args: &DeidentifyArgs) -> Result<()> {
    let inputs: Vec<&Path> = args.inputs.iter().map(PathBuf::as_path).collect();
    // Refused before the inputs are walked (export_files checks again, at no cost).
    crate::atomic::refuse_overwriting_inputs("--out", &args.out, &inputs).map_err(|e| Error::Invalid(e.to_string()))?;
    let files = collect_files(&args.inputs)?;
    let options = Options { retain_dates: args.retain_dates };
    let report = export_files(&inputs, &files, &args.out, options, &mut |outcome| match outcome {
        Ok(e) => println!("{} -> {}", e.input.display(), e.output.display()),
        Err(e) => eprintln!("melo: skipped {}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")),
    })?;
    println!("{}", report.summary());
    for b in report.burned_in() {
        println!("warning: {} is marked Burned In Annotation YES; check its pixels before sharing", b.display());
    }
    if !report.failed.is_empty() {
        return Err(Error::Invalid(format!(
            "{} of {} file(s) could not be de-identified (see above)",
            report.failed.len(),
            files.len()
        )));
    }
    Ok(())
}
