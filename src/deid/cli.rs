//! `melo deidentify IN… --out DIR` (the `Command` variant in `crate::cli` only forwards here).

use std::path::{Path, PathBuf};

use clap::Args;

use super::{collect_files, method_codes, Deidentifier, Error, Options, Result};

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
    crate::atomic::refuse_overwriting_inputs("--out", &args.out, &inputs).map_err(|e| Error::Invalid(e.to_string()))?;
    let files = collect_files(&args.inputs)?;
    if files.is_empty() {
        return Err(Error::Invalid("no file among the inputs".into()));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| match crate::Error::io(&args.out, e) {
        crate::Error::Io(io) => Error::Io(io),
        other => Error::Invalid(other.to_string()),
    })?;
    let options = Options { retain_dates: args.retain_dates };
    let run = Deidentifier::new(options.clone());
    let (mut written, mut failed, mut burned) = (0usize, 0usize, Vec::new());
    for file in &files {
        match run.export_file(file, &args.out) {
            Ok(e) => {
                println!("{} -> {}", e.input.display(), e.output.display());
                if e.burned_in_annotation {
                    burned.push(e.input);
                }
                written += 1;
            }
            Err(e) => {
                eprintln!("melo: skipped {}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" "));
                failed += 1;
            }
        }
    }
    let codes: Vec<String> = method_codes(&options).iter().map(|(c, m)| format!("{m} (DCM {c})")).collect();
    println!(
        "{written} file(s) de-identified into {}: {}; new UIDs consistent within this run; Patient Identity \
         Removed YES. Pixel data untouched: text burned into the pixels is NOT removed.",
        args.out.display(),
        codes.join(", ")
    );
    for b in &burned {
        println!("warning: {} is marked Burned In Annotation YES; check its pixels before sharing", b.display());
    }
    if failed > 0 {
        return Err(Error::Invalid(format!(
            "{failed} of {} file(s) could not be de-identified (see above)",
            files.len()
        )));
    }
    Ok(())
}
