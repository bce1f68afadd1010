//! Handler of `melo audit` (the `Command::Audit` variant in `crate::cli` only forwards here).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use clap::{Args, ValueEnum};

use super::error::{Error, Result};
use super::{AttackKind, AuditConfig, Preset, Report};
use crate::diffusion::DiffusionModel;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClassifierArg {
    Logistic,
    Mlp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PresetArg {
    Quick,
    Full,
}

/// `melo audit --target DIR --members PATH --nonmembers PATH --attack all|NAME… --out report.json`
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Diffusers folder: a pixel-space model (config.json, diffusion_pytorch_model.safetensors,
    /// scheduler_config.json) or a Stable Diffusion 1.x / 2.x pipeline (model_index.json).
    #[arg(long, required_unless_present_any = ["demo", "demo_sd", "adapter"])]
    pub target: Option<PathBuf>,
    /// Audit a diagnosis adapter instead of a diffusion model (issue 19): loss and LiRA with
    /// shadow adapters trained by the target's recipe. --members / --nonmembers / --population
    /// are then `.npz` files or ImageFolder folders as `melo train` reads them, optionally
    /// `PATH:train|val|test` for one split (split as the target's recipe split it).
    #[arg(long, conflicts_with_all = ["target", "demo", "demo_sd"])]
    pub adapter: Option<PathBuf>,
    /// The target adapter's `melo train` report (its recipe; default: ADAPTER.report.json).
    #[arg(long, requires = "adapter")]
    pub recipe: Option<PathBuf>,
    /// Adapter audit: extra images the shadows may train on besides members and non-members.
    #[arg(long, requires = "adapter")]
    pub population: Option<PathBuf>,
    /// Adapter audit: shadow adapters for LiRA (at least 2; the paper's figures use 64+).
    #[arg(long, default_value_t = 16, requires = "adapter")]
    pub shadows: usize,
    /// Adapter audit: cache of shadow adapters (default: OUT.shadows/ beside --out); reused
    /// when target, recipe, pool and seed are the same.
    #[arg(long, requires = "adapter")]
    pub shadow_dir: Option<PathBuf>,
    /// Known training members: .npz (key 'images', uint8), a folder of PNG/JPEG images, or a
    /// captioned folder (metadata.jsonl with file_name and text per line) for a pipeline.
    #[arg(long, required_unless_present_any = ["demo", "demo_sd"])]
    pub members: Option<PathBuf>,
    /// Known non-members, same formats.
    #[arg(long, required_unless_present_any = ["demo", "demo_sd"])]
    pub nonmembers: Option<PathBuf>,
    /// Use the shipped pixel-space demo target and its member / non-member sets (assets/demo_ddpm).
    #[arg(long, conflicts_with_all = ["target", "members", "nonmembers", "demo_sd"])]
    pub demo: bool,
    /// Use the shipped latent demo: a small Stable Diffusion pipeline fine-tuned on captioned
    /// blood-cell images, with its members/ and nonmembers/ (assets/demo_sd).
    #[arg(long, conflicts_with_all = ["target", "members", "nonmembers"])]
    pub demo_sd: bool,
    /// Continue an interrupted audit: reuse the attacks finished in the checkpoint beside
    /// --out (OUT.partial.json), which is written after every attack.
    #[arg(long)]
    pub resume: bool,
    /// Attacks to run: all (those that apply to the target), or any of loss, pia, secmi,
    /// trajectory, clid for a diffusion model, loss, lira, rmia (or their _online / _offline
    /// halves) for an adapter (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub attack: Vec<String>,
    /// JSON report (written atomically).
    #[arg(long, required_unless_present = "bench_batch")]
    pub out: Option<PathBuf>,
    /// Also write per-sample scores as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Name samples in the report and CSV by their file name (or .npz index) instead of a
    /// pseudonym (member-0001, nonmember-0001); only for reports that stay with the auditor.
    #[arg(long)]
    pub report_file_names: bool,
    /// Parameter preset; the options below override it.
    #[arg(long, value_enum, default_value = "full")]
    pub preset: PresetArg,
    /// Use only the first N members and N non-members.
    #[arg(long)]
    pub n: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Images per model call.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Bootstrap resamples for the AUC confidence interval.
    #[arg(long)]
    pub bootstrap: Option<usize>,
    /// Loss attack timesteps, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub loss_t: Option<Vec<usize>>,
    #[arg(long)]
    pub loss_draws: Option<usize>,
    #[arg(long)]
    pub pia_t: Option<usize>,
    #[arg(long)]
    pub pia_p: Option<f64>,
    #[arg(long)]
    pub secmi_t: Option<usize>,
    #[arg(long)]
    pub secmi_interval: Option<usize>,
    /// Trajectory attack: starting timesteps (noise strengths), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub traj_strengths: Option<Vec<usize>>,
    #[arg(long)]
    pub traj_steps: Option<usize>,
    #[arg(long)]
    pub traj_draws: Option<usize>,
    #[arg(long)]
    pub traj_train_fraction: Option<f64>,
    /// CLiD timesteps, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub clid_t: Option<Vec<usize>>,
    #[arg(long)]
    pub clid_draws: Option<usize>,
    /// Trajectory attack classifier: logistic (default) or mlp.
    #[arg(long, value_enum)]
    pub traj_classifier: Option<ClassifierArg>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Instead of auditing: time the target's UNet forward at this batch size and print JSON.
    #[arg(long)]
    pub bench_batch: Option<usize>,
}

fn parse_attacks(names: &[String], target: &Path) -> Result<Vec<AttackKind>> {
    let mut kinds = Vec::new();
    for name in names.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if name.eq_ignore_ascii_case("all") {
            kinds.extend(AttackKind::for_target(target));
        } else {
            kinds.push(name.parse::<AttackKind>().map_err(Error::Params)?);
        }
    }
    let mut unique = Vec::new();
    for k in kinds {
        if !unique.contains(&k) {
            unique.push(k);
        }
    }
    if unique.is_empty() {
        return Err(Error::Params("no attack selected".into()));
    }
    Ok(unique)
}

/// The audit configuration the arguments describe.
pub fn config_from_args(args: &AuditArgs) -> Result<AuditConfig> {
    let preset = match args.preset {
        PresetArg::Quick => Preset::Quick,
        PresetArg::Full => Preset::Full,
    };
    let mut c = if args.demo {
        AuditConfig::demo(preset)
    } else if args.demo_sd {
        AuditConfig::demo_sd(preset)
    } else {
        let need =
            |p: &Option<PathBuf>, what: &str| p.clone().ok_or_else(|| Error::Params(format!("--{what} is required")));
        AuditConfig::new(
            need(&args.target, "target")?,
            need(&args.members, "members")?,
            need(&args.nonmembers, "nonmembers")?,
            preset,
        )
    };
    c.attacks = parse_attacks(&args.attack, &c.target)?;
    c.report_file_names = args.report_file_names;
    if let Some(n) = args.n {
        c.max_per_set = Some(n);
    }
    if let Some(v) = args.seed {
        c.seed = v;
    }
    if let Some(v) = args.batch {
        c.batch_size = v;
    }
    if let Some(v) = args.bootstrap {
        c.bootstrap_resamples = v;
    }
    if let Some(v) = &args.loss_t {
        c.loss.timesteps = v.clone();
    }
    if let Some(v) = args.loss_draws {
        c.loss.draws = v;
    }
    if let Some(v) = args.pia_t {
        c.pia.timestep = v;
    }
    if let Some(v) = args.pia_p {
        c.pia.p = v;
    }
    if let Some(v) = args.secmi_t {
        c.secmi.timestep = v;
    }
    if let Some(v) = args.secmi_interval {
        c.secmi.interval = v;
    }
    if let Some(v) = &args.traj_strengths {
        c.trajectory.strengths = v.clone();
    }
    if let Some(v) = args.traj_steps {
        c.trajectory.steps = v;
    }
    if let Some(v) = args.traj_draws {
        c.trajectory.draws = v;
    }
    if let Some(v) = args.traj_train_fraction {
        c.trajectory.train_fraction = v;
    }
    if let Some(v) = &args.clid_t {
        c.clid.timesteps = v.clone();
    }
    if let Some(v) = args.clid_draws {
        c.clid.draws = v;
    }
    if let Some(v) = args.traj_classifier {
        c.trajectory.classifier = match v {
            ClassifierArg::Logistic => super::classifier::ClassifierKind::Logistic,
            ClassifierArg::Mlp => super::classifier::ClassifierKind::Mlp,
        };
    }
    Ok(c)
}

/// Refuses, before any work, an output whose folder is missing, that is an input, lies inside
/// the target, members or non-members folder, or (`--out` vs `--csv`) is the other output.
fn check_outputs(out: &Path, csv: Option<&Path>, config: &AuditConfig) -> Result<()> {
    let inputs = [config.target.as_path(), config.members.as_path(), config.nonmembers.as_path()];
    for (what, path) in std::iter::once(("--out", out)).chain(csv.map(|c| ("--csv", c))) {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(Error::Params(format!("{}: the output folder does not exist", path.display())));
        }
        crate::atomic::refuse_overwriting_inputs(what, path, &inputs)?;
    }
    if let Some(csv) = csv {
        crate::atomic::refuse_same_output("--out and --csv", out, csv)?;
    }
    Ok(())
}

pub fn audit(args: &AuditArgs) -> Result<()> {
    if let Some(adapter) = &args.adapter {
        return audit_adapter(args, adapter);
    }
    let config = config_from_args(args)?;
    if let Some(batch) = args.bench_batch {
        return bench_forward(&config.target, batch);
    }
    let out = args.out.as_ref().ok_or_else(|| Error::Params("--out is required".into()))?;
    let mut config = config;
    check_outputs(out, args.csv.as_deref(), &config)?;
    let checkpoint = checkpoint_path(out);
    if !args.resume && checkpoint.exists() {
        eprintln!("note: {} is from an earlier run; starting over (--resume reuses it)", checkpoint.display());
    }
    config.checkpoint = Some(super::Checkpoint { path: checkpoint.clone(), resume: args.resume });
    let bar = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} model calls  {elapsed_precise}  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let cancel = AtomicBool::new(false);
    let mut on_progress = |p: super::Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(p.message);
    };
    let report = super::run(&config, &mut on_progress, &cancel)?;
    bar.finish_and_clear();
    report.write_json(out)?;
    if let Some(csv) = &args.csv {
        report.write_csv(csv)?;
    }
    // the report holds everything the checkpoint did
    if let Err(e) = std::fs::remove_file(&checkpoint) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: could not remove {} ({e})", checkpoint.display());
        }
    }
    print_summary(&report);
    Ok(())
}

/// `melo audit --adapter …`: membership inference on a diagnosis adapter.
fn audit_adapter(args: &AuditArgs, adapter: &Path) -> Result<()> {
    use super::adapter::{AdapterAttack, AdapterAuditConfig, SetSpec};
    let out = args.out.as_ref().ok_or_else(|| Error::Params("--out is required".into()))?;
    let spec = |p: &Option<PathBuf>, what: &str| -> Result<SetSpec> {
        p.as_ref()
            .map(|p| SetSpec::parse(&p.to_string_lossy()))
            .ok_or_else(|| Error::Params(format!("--{what} is required with --adapter")))
    };
    let mut shadow_dir = out.clone().into_os_string();
    shadow_dir.push(".shadows");
    let backbone = crate::model::engine::default_backbone_dir()
        .ok_or_else(|| Error::Params("no backbone folder found (set MELO_BACKBONE)".into()))?;
    let config = AdapterAuditConfig {
        adapter: adapter.to_path_buf(),
        recipe: args.recipe.clone(),
        members: spec(&args.members, "members")?,
        nonmembers: spec(&args.nonmembers, "nonmembers")?,
        population: args.population.as_ref().map(|p| SetSpec::parse(&p.to_string_lossy())),
        attacks: AdapterAttack::parse_list(&args.attack)?,
        shadows: args.shadows,
        shadow_dir: args.shadow_dir.clone().unwrap_or_else(|| PathBuf::from(shadow_dir)),
        limit: args.n,
        seed: args.seed.unwrap_or(0),
        bootstrap: super::metrics::BootstrapOptions { resamples: args.bootstrap.unwrap_or(2000), ..Default::default() },
        backbone,
    };
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Both cores for the backbone's matrix products (shadows train one after another).
        std::env::set_var("CANDLE_NUM_THREADS", "2");
    }
    let quiet = args.quiet;
    let cancel = AtomicBool::new(false);
    let started = Instant::now();
    let mut on_progress = |p: super::adapter::Progress| {
        if !quiet {
            eprintln!("[{:>6.0} s] {} ({}/{})", started.elapsed().as_secs_f64(), p.message, p.done, p.total);
        }
    };
    let report = super::adapter::run(&config, &mut on_progress, &cancel)?;
    report.write_json(out)?;
    print_attack_table(&report.attacks);
    if let Some(s) = &report.shadows {
        println!(
            "shadows: {} ({} trained now in {:.0} s, {} from the cache), each on {} of {} pool images",
            s.count, s.trained_now, s.seconds_training, s.reused_from_cache, s.train_size, s.pool_size
        );
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// One row per attack: AUC with its CI, TPR at low FPR, balanced accuracy, queries, seconds
/// (the diffusion and the adapter audit alike).
fn print_attack_table(attacks: &[super::report::AttackReport]) {
    println!(
        "{:<12} {:>6} {:>17} {:>9} {:>10} {:>8} {:>8} {:>8}",
        "attack", "AUC", "95 % CI", "TPR@1%", "TPR@0.1%", "bal.acc", "queries", "seconds"
    );
    for a in attacks {
        let m = &a.metrics;
        println!(
            "{:<12} {:>6.3} [{:.3}, {:.3}] {:>9.3} {:>10.3} {:>8.3} {:>8} {:>8.1}",
            a.name,
            m.auc,
            m.auc_ci95[0],
            m.auc_ci95[1],
            m.tpr_at_1pct_fpr,
            m.tpr_at_0_1pct_fpr,
            m.balanced_accuracy,
            a.queries_per_sample,
            a.seconds
        );
    }
}

/// `OUT.partial.json` beside the report.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial.json");
    out.with_file_name(name)
}

fn print_summary(r: &Report) {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "target {}: {} ({} UNet parameters); {} members, {} non-members",
        r.target.dir, r.target.kind, r.target.parameters, r.n_members, r.n_nonmembers
    );
    print_attack_table(&r.attacks);
    println!("total {:.1} s ({} threads)", r.timings.total_seconds, r.timings.threads);
}

/// Times the UNet forward of a target (random inputs, random timesteps), for
/// `docs/benchmarks.md` against `benches/torch_unet.py`.
fn bench_forward(target: &Path, batch: usize) -> Result<()> {
    if batch == 0 {
        return Err(Error::Params("--bench-batch must be positive".into()));
    }
    let model = DiffusionModel::load(target)?;
    let cfg = model.unet.config();
    let s = cfg.sample_size.unwrap_or(32);
    let x = super::attacks::gaussian_noise(&[batch, cfg.in_channels, s, s], 0, 0)?;
    let ts: Vec<f64> = (0..batch).map(|i| ((i * 37) % 1000) as f64).collect();
    model.unet.forward(&x, &ts)?; // warm-up
    let reps = (2000 / batch).clamp(3, 50);
    let t0 = Instant::now();
    for _ in 0..reps {
        model.unet.forward(&x, &ts)?;
    }
    let per_call = t0.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{}",
        serde_json::json!({
            "target": target.display().to_string(),
            "batch": batch,
            "repeats": reps,
            "ms_per_call": per_call * 1e3,
            "ms_per_image": per_call * 1e3 / batch as f64,
            "threads": candle_core::utils::get_num_threads(),
        })
    );
    Ok(())
}
