//! Records the git commit lmc is built from, for `lmc --version`: `LMC_COMMIT` is the short
//! hash, with `-dirty` when tracked files had changes, or `unknown` outside a git checkout (a
//! source tarball, a crate). Cargo reruns this when HEAD moves (a commit, a checkout) or the
//! index changes; edits that are not yet staged show as `-dirty` from the next rerun on.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match git(&dir, &["rev-parse", "--short", "HEAD"]).filter(|h| !h.is_empty()) {
        None => "unknown".to_string(),
        Some(hash) => {
            // What makes this rerun: HEAD itself, the branch it points to, packed refs, and
            // the index. The paths come from git (a worktree's .git is a file).
            let mut watched = Vec::new();
            if let Some(head) = git(&dir, &["rev-parse", "--git-path", "HEAD"]) {
                watched.push(head);
            }
            if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
                watched.extend(git(&dir, &["rev-parse", "--git-path", &branch]));
            }
            watched.extend(git(&dir, &["rev-parse", "--git-path", "packed-refs"]));
            watched.extend(git(&dir, &["rev-parse", "--git-path", "index"]));
            for path in watched {
                let path = dir.join(path);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            let dirty = git(&dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{hash}-dirty")
            } else {
                hash
            }
        }
    };
    println!("cargo:rustc-env=LMC_COMMIT={commit}");
}
