//! `wxedge compress [DIR]`: the dist's gzip and br twins written ahead of time (at image build
//! time), beside each text file of `compress_min_bytes` or more, with the edge's own encoder, and
//! the manifest that lets the edge check them at start-up ([`super::compress::Manifest`]).
//!
//! Run again, it rewrites only what changed: a twin listed in the manifest and made from the
//! file as it is now is left alone. A twin it did not write (the build's own) is kept when it
//! decodes to its file, replaced when it does not. Twins it wrote for files that are gone are
//! removed. Files of any size are compressed (the edge itself compresses only what fits its
//! memory budget; it serves the twins of larger files from disk).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::compress::{self, Digest, Entry, Manifest, TwinCheck};
use super::model::Encoding;
use super::tree::{self, content_type_for, is_compressible, DistFile};
use crate::config::StaticSettings;

/// What became of one twin name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Written (new, or its file changed since the last run).
    Written,
    /// Listed and made from the file as it is: left alone.
    Current,
    /// Compressing saved less than a tenth: no twin (recorded, so it is not tried again).
    NotWorth,
    /// Shipped by the build, not listed, decodes to its file: kept and listed.
    Adopted,
    /// Shipped by the build but did not decode to its file: replaced (or removed).
    Replaced,
}

/// What a run did, for its summary.
#[derive(Debug, Default)]
pub struct Report {
    pub root: PathBuf,
    pub files: usize,
    pub source_bytes: u64,
    pub written: usize,
    pub current: usize,
    pub not_worth: usize,
    pub adopted: usize,
    pub replaced: usize,
    /// Twins this command had written whose file is gone (or no longer compressed).
    pub removed: usize,
    pub gzip_bytes: u64,
    pub brotli_bytes: u64,
    /// Files or twins that could not be read or written, with why.
    pub failed: Vec<String>,
    pub manifest_written: bool,
}

impl Report {
    /// The summary lines the command prints.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "compress: {}: {} text files of compress_min_bytes or more, {}",
                self.root.display(),
                self.files,
                size(self.source_bytes)
            ),
            format!(
                "compress: {} twins written, {} up to date, {} not worth it (saved less than a tenth), {} shipped twins checked and kept, {} shipped twins replaced (did not decode to their file), {} removed (their file is gone)",
                self.written, self.current, self.not_worth, self.adopted, self.replaced, self.removed
            ),
            format!(
                "compress: twins now hold gzip {}, br {}; manifest {} {}",
                size(self.gzip_bytes),
                size(self.brotli_bytes),
                compress::MANIFEST,
                if self.manifest_written {
                    "written"
                } else {
                    "unchanged"
                }
            ),
        ];
        for f in &self.failed {
            lines.push(format!("compress: FAILED {f}"));
        }
        lines
    }
}

/// Bytes as people read them: `680 B`, `1.1 KiB`, `95.4 MiB`.
fn size(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// Compress the dist at `root` (see the module's documentation). Fails only when the dist cannot
/// be read at all or the manifest cannot be written; per-file failures are in the report.
pub fn run(root: &Path, opts: &StaticSettings) -> Result<Report, String> {
    let root = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let (_, found) = tree::walk(&root);
    let old = Manifest::read(&root);
    let names: HashSet<&str> = found.iter().map(|f| f.clean.as_str()).collect();
    let candidates: Vec<&DistFile> = found
        .iter()
        .filter(|f| {
            f.meta.len() >= opts.compress_min_bytes
                && is_compressible(&content_type_for(&f.clean).0)
        })
        .collect();
    let mut report = Report {
        root: root.clone(),
        files: candidates.len(),
        source_bytes: candidates.iter().map(|f| f.meta.len()).sum(),
        ..Report::default()
    };
    let done = compress_all(&root, &candidates, &old, &names);
    let manifest = tally(&mut report, done);
    remove_stale_twins(&root, &old, &manifest, &mut report);

    let on_file = root.join(compress::MANIFEST);
    if manifest != old || (!on_file.exists() && !manifest.entries.is_empty()) {
        compress::write_atomically(&on_file, manifest.render().as_bytes())
            .map_err(|e| format!("{}: {e}", on_file.display()))?;
        report.manifest_written = true;
    }
    Ok(report)
}

/// Each candidate's twins made (or found current), in no particular order.
fn compress_all(
    root: &Path,
    candidates: &[&DistFile],
    old: &Manifest,
    names: &HashSet<&str>,
) -> Vec<Result<Vec<Done>, String>> {
    // One file per worker at a time, all cores: this runs at build time, nobody waits on it.
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Result<Vec<Done>, String>>> = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(candidates.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = candidates.get(i) else { break };
                let result = compress_file(root, f, old, names);
                done.lock().expect("not poisoned").push(result);
            });
        }
    });
    done.into_inner().expect("not poisoned")
}

/// Counts the results into `report`; the new manifest of the twins made or kept.
fn tally(report: &mut Report, done: Vec<Result<Vec<Done>, String>>) -> Manifest {
    let mut manifest = Manifest::default();
    for result in done {
        let twins = match result {
            Ok(twins) => twins,
            Err(e) => {
                report.failed.push(e);
                continue;
            }
        };
        for d in twins {
            match d.outcome {
                Ok(outcome) => {
                    match outcome {
                        Outcome::Written => report.written += 1,
                        Outcome::Current => report.current += 1,
                        Outcome::NotWorth => report.not_worth += 1,
                        Outcome::Adopted => report.adopted += 1,
                        Outcome::Replaced => report.replaced += 1,
                    }
                    let size = d.entry.twin.map_or(0, |t| t.len);
                    match d.encoding {
                        Encoding::Gzip => report.gzip_bytes += size,
                        _ => report.brotli_bytes += size,
                    }
                    manifest.entries.insert(d.twin_path, d.entry);
                }
                Err(e) => report.failed.push(e),
            }
        }
    }
    manifest
}

/// Twins this command wrote for files it no longer compresses: removed while they are still
/// exactly what it wrote (a file put there since is someone else's).
fn remove_stale_twins(root: &Path, old: &Manifest, manifest: &Manifest, report: &mut Report) {
    for (path, entry) in &old.entries {
        if manifest.entries.contains_key(path) {
            continue;
        }
        let Some(twin) = entry.twin else { continue };
        let file = on_disk(root, path);
        if Digest::of_file(&file).is_ok_and(|d| d == twin) {
            match std::fs::remove_file(&file) {
                Ok(()) => report.removed += 1,
                Err(e) => report.failed.push(format!("{}: {e}", file.display())),
            }
        }
    }
}

/// One twin name's result: its manifest entry, or why it failed.
struct Done {
    twin_path: String,
    encoding: Encoding,
    entry: Entry,
    outcome: Result<Outcome, String>,
}

/// Where a clean path (`/assets/a.js.gz`) is in the dist.
fn on_disk(root: &Path, clean: &str) -> PathBuf {
    root.join(clean.trim_start_matches('/'))
}

/// Both twins of one file.
fn compress_file(
    root: &Path,
    f: &DistFile,
    old: &Manifest,
    names: &HashSet<&str>,
) -> Result<Vec<Done>, String> {
    let data = std::fs::read(&f.real).map_err(|e| format!("{}: {e}", f.real.display()))?;
    let source = Digest::of(&data);
    let mut out = Vec::new();
    for (enc, ext) in compress::ENCODINGS {
        let twin_path = format!("{}.{ext}", f.clean);
        let file = on_disk(root, &twin_path);
        let mut entry = Entry { source, twin: None };
        let outcome = (|| -> Result<Outcome, String> {
            let failed = |e: std::io::Error| format!("{}: {e}", file.display());
            // What is there already: ours and current, the build's own, or nothing.
            let mut replacing = false;
            if names.contains(twin_path.as_str()) {
                let shipped = std::fs::read(&file).map_err(failed)?;
                let twin = Digest::of(&shipped);
                match old.check(&twin_path, twin, source) {
                    TwinCheck::Current => {
                        entry.twin = Some(twin);
                        return Ok(Outcome::Current);
                    }
                    TwinCheck::Stale => {}
                    TwinCheck::Shipped if compress::decodes_to(enc, &shipped, &data) => {
                        entry.twin = Some(twin);
                        return Ok(Outcome::Adopted);
                    }
                    TwinCheck::Shipped => {
                        log::warn!(
                            "compress: {} does not decode to {}: replaced",
                            file.display(),
                            f.clean
                        );
                        replacing = true;
                    }
                }
            } else if old.not_worth(&twin_path, source) {
                return Ok(Outcome::Current);
            }
            match compress::encode(enc, &data) {
                Some(c) => {
                    compress::write_atomically(&file, &c).map_err(failed)?;
                    entry.twin = Some(Digest::of(&c));
                    Ok(if replacing {
                        Outcome::Replaced
                    } else {
                        Outcome::Written
                    })
                }
                None => {
                    // A twin left from an earlier version of the file must not stay.
                    if names.contains(twin_path.as_str()) {
                        std::fs::remove_file(&file).map_err(failed)?;
                    }
                    Ok(if replacing {
                        Outcome::Replaced
                    } else {
                        Outcome::NotWorth
                    })
                }
            }
        })();
        out.push(Done {
            twin_path,
            encoding: enc,
            entry,
            outcome,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn dist(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("wxedge-precompress-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("assets")).unwrap();
        d
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn writes_checks_and_rewrites_only_what_changed() {
        let d = dist("run");
        let js = "function hello(){return 'wxedge';}\n".repeat(200);
        std::fs::write(d.join("assets/a.js"), &js).unwrap();
        std::fs::write(d.join("small.css"), ".a{}").unwrap();
        std::fs::write(d.join("logo.png"), vec![7u8; 4096]).unwrap();
        let opts = StaticSettings::default();

        let r = run(&d, &opts).unwrap();
        assert_eq!((r.files, r.written, r.current), (1, 2, 0), "{r:?}");
        assert!(r.failed.is_empty() && r.manifest_written);
        assert_eq!(
            gunzip(&std::fs::read(d.join("assets/a.js.gz")).unwrap()),
            js.as_bytes()
        );
        assert!(compress::decodes_to(
            Encoding::Brotli,
            &std::fs::read(d.join("assets/a.js.br")).unwrap(),
            js.as_bytes()
        ));
        assert!(!d.join("small.css.gz").exists() && !d.join("logo.png.gz").exists());

        // Nothing changed: nothing written, not even the manifest.
        let before = std::fs::metadata(d.join("assets/a.js.gz"))
            .unwrap()
            .modified()
            .unwrap();
        let r = run(&d, &opts).unwrap();
        assert_eq!(
            (r.written, r.current, r.manifest_written),
            (0, 2, false),
            "{r:?}"
        );
        let after = std::fs::metadata(d.join("assets/a.js.gz"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);

        // The file changes: its twins are made again; the manifest tells the edge which are current.
        let js2 = "function bye(){return 'edge';}\n".repeat(300);
        std::fs::write(d.join("assets/a.js"), &js2).unwrap();
        let (m, _) = Manifest::parse(&std::fs::read_to_string(d.join(compress::MANIFEST)).unwrap());
        let old_twin = Digest::of(&std::fs::read(d.join("assets/a.js.gz")).unwrap());
        assert_eq!(
            m.check("/assets/a.js.gz", old_twin, Digest::of(js2.as_bytes())),
            TwinCheck::Stale
        );
        let r = run(&d, &opts).unwrap();
        assert_eq!((r.written, r.current), (2, 0), "{r:?}");
        assert_eq!(
            gunzip(&std::fs::read(d.join("assets/a.js.gz")).unwrap()),
            js2.as_bytes()
        );

        // A twin shipped by the build: kept when it decodes to its file, replaced when not.
        let css = ".a{color:red}\n".repeat(300);
        std::fs::write(d.join("b.css"), &css).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, css.as_bytes()).unwrap();
        let fast = gz.finish().unwrap();
        std::fs::write(d.join("b.css.gz"), &fast).unwrap();
        std::fs::write(d.join("b.css.br"), b"not brotli").unwrap();
        let r = run(&d, &opts).unwrap();
        assert_eq!((r.adopted, r.replaced, r.written), (1, 1, 0), "{r:?}");
        assert_eq!(
            std::fs::read(d.join("b.css.gz")).unwrap(),
            fast,
            "kept as shipped"
        );
        assert!(compress::decodes_to(
            Encoding::Brotli,
            &std::fs::read(d.join("b.css.br")).unwrap(),
            css.as_bytes()
        ));

        // The file is gone: the twins this command wrote go too.
        std::fs::remove_file(d.join("assets/a.js")).unwrap();
        let r = run(&d, &opts).unwrap();
        assert_eq!(r.removed, 2, "{r:?}");
        assert!(!d.join("assets/a.js.gz").exists() && !d.join("assets/a.js.br").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unwritable_twins_are_reported() {
        let d = dist("ro");
        std::fs::write(d.join("assets/a.js"), "let x = 1;\n".repeat(500)).unwrap();
        // A directory where the twin would go: it cannot be written.
        std::fs::create_dir_all(d.join("assets/a.js.gz")).unwrap();
        std::fs::write(d.join("assets/a.js.gz/x"), "x").unwrap();
        let r = run(&d, &StaticSettings::default()).unwrap();
        assert_eq!(r.written, 1, "{r:?}");
        assert_eq!(r.failed.len(), 1, "{r:?}");
        assert!(r.lines().iter().any(|l| l.contains("FAILED")));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
