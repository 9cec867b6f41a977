//! A quality sweep split over machines that share no disk. Each part's `--out` directory
//! records which experiment it runs and which lmc ran it (`sweep.json`); `lmc ab merge PART...`
//! gathers the parts' finished training runs into one directory, refusing parts of another
//! experiment or another lmc, and the report is made from there as after an unsplit sweep.

use crate::Failure;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record's file name in an `--out` directory.
pub const RECORD: &str = "sweep.json";

/// What a part says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    /// The experiment file, as an absolute path.
    pub experiment: PathBuf,
    pub experiment_sha256: String,
    pub lmc_version: String,
    pub commit: String,
}

impl SweepRecord {
    pub fn new(experiment: &Path) -> Result<SweepRecord, Failure> {
        let absolute =
            std::path::absolute(experiment).map_err(|e| Failure::Message(format!("cannot resolve {}: {e}", experiment.display())))?;
        Ok(SweepRecord {
            experiment_sha256: crate::train::data::sha256_file(&absolute).map_err(Failure::Message)?,
            experiment: absolute,
            lmc_version: env!("CARGO_PKG_VERSION").into(),
            commit: env!("LMC_COMMIT").into(),
        })
    }

    /// Writes the record into `out` (replacing an earlier one of the same sweep).
    pub fn write(&self, out: &Path) -> Result<(), Failure> {
        std::fs::create_dir_all(out).map_err(|e| Failure::Message(format!("cannot create {}: {e}", out.display())))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| Failure::Message(e.to_string()))?;
        let staging = out.join(format!("{RECORD}.partial"));
        std::fs::write(&staging, format!("{text}\n"))
            .and_then(|()| std::fs::rename(&staging, out.join(RECORD)))
            .map_err(|e| Failure::Message(format!("cannot write {}: {e}", out.join(RECORD).display())))
    }

    fn read(part: &Path) -> Result<SweepRecord, Failure> {
        let path = part.join(RECORD);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Failure::Message(format!(
                "{} holds no {RECORD}: it is not the --out directory of an `lmc ab EXPERIMENT.yaml` sweep",
                part.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| Failure::Message(format!("{}: {e}", path.display())))
    }
}

/// Gathers the finished training runs of `parts` into `out` (a part may be `out` itself) and
/// returns the experiment file they ran: the one they recorded, or `experiment` where it has
/// moved since. Parts of different experiments, an experiment file that differs from theirs, or
/// another lmc, are errors; a run finished in two parts is taken from the first.
pub fn merge(experiment: Option<&Path>, parts: &[PathBuf], out: Option<&Path>) -> Result<(PathBuf, PathBuf), Failure> {
    use crate::quality::finished;
    let Some(first) = parts.first() else {
        return Err(Failure::Message("lmc ab merge: give the parts' --out directories".into()));
    };
    let record = SweepRecord::read(first)?;
    for part in &parts[1..] {
        let other = SweepRecord::read(part)?;
        let differ = |what: &str, a: &str, b: &str| {
            Failure::Message(format!(
                "{} and {} are parts of different sweeps: {what} {a} against {b}",
                first.display(),
                part.display()
            ))
        };
        if other.experiment_sha256 != record.experiment_sha256 {
            return Err(differ(
                "experiment",
                &format!("{} (sha256 {})", record.experiment.display(), &record.experiment_sha256[..12]),
                &format!("{} (sha256 {})", other.experiment.display(), &other.experiment_sha256[..12]),
            ));
        }
        if (&other.lmc_version, &other.commit) != (&record.lmc_version, &record.commit) {
            return Err(differ(
                "lmc",
                &format!("{} ({})", record.lmc_version, record.commit),
                &format!("{} ({})", other.lmc_version, other.commit),
            ));
        }
    }
    let file = experiment.unwrap_or(&record.experiment);
    let now = SweepRecord::new(file).map_err(|_| {
        Failure::Message(format!(
            "the parts ran {}, which is not there now: give it first (`lmc ab merge EXPERIMENT.yaml PART...`)",
            file.display()
        ))
    })?;
    if now.experiment_sha256 != record.experiment_sha256 {
        return Err(Failure::Message(format!(
            "{} is not the experiment the parts ran (sha256 {} now, {} then: {})",
            file.display(),
            &now.experiment_sha256[..12],
            &record.experiment_sha256[..12],
            record.experiment.display()
        )));
    }
    if (&now.lmc_version, &now.commit) != (&record.lmc_version, &record.commit) {
        return Err(Failure::Message(format!(
            "the parts were run by lmc {} ({}); this is lmc {} ({}): score them with the same build",
            record.lmc_version, record.commit, now.lmc_version, now.commit
        )));
    }
    let out = out.map_or_else(|| first.clone(), Path::to_path_buf);
    for part in parts {
        let runs = part.join("runs");
        if same_dir(part, &out) || !runs.is_dir() {
            continue;
        }
        for variant in read_dir(&runs)? {
            if !variant.is_dir() {
                continue;
            }
            for run in read_dir(&variant)? {
                if !run.is_dir() || !finished(&run) {
                    continue;
                }
                let relative = run.strip_prefix(part).map_err(|e| Failure::Message(e.to_string()))?;
                let target = out.join(relative);
                if finished(&target) {
                    continue;
                }
                copy_run(&run, &target)?;
            }
        }
    }
    now.write(&out)?;
    Ok((now.experiment, out))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Failure::Message(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// Copies a run directory (and its log beside it) into place: into a staging directory first,
/// renamed when complete, so an interrupted merge leaves no half run that looks whole.
fn copy_run(run: &Path, target: &Path) -> Result<(), Failure> {
    let staging = target.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    copy_dir(run, &staging)?;
    let _ = std::fs::remove_dir_all(target);
    std::fs::rename(&staging, target).map_err(|e| Failure::Message(format!("cannot write {}: {e}", target.display())))?;
    let log = run.with_extension("log.jsonl");
    if log.is_file() {
        std::fs::copy(&log, target.with_extension("log.jsonl"))
            .map_err(|e| Failure::Message(format!("cannot copy {}: {e}", log.display())))?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(to).map_err(|e| Failure::Message(format!("cannot create {}: {e}", to.display())))?;
    for entry in read_dir(from)? {
        let dest = to.join(entry.file_name().unwrap_or_default());
        if entry.is_dir() {
            copy_dir(&entry, &dest)?;
        } else {
            std::fs::copy(&entry, &dest).map_err(|e| Failure::Message(format!("cannot copy {}: {e}", entry.display())))?;
        }
    }
    Ok(())
}
