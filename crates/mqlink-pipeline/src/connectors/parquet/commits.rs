//! The commit manifest `.NAME.commits` in the sink's `path`: one line per
//! commit, appended and fsynced after every file of the commit is closed
//! and fsynced under its temporary name and before any is renamed. It
//! names each file (directory and stem) and the log positions every row
//! up to which is then in a committed file. At open the last whole line
//! is rolled forward (a temporary file it names that still exists is
//! renamed: it was complete before the line), and its positions hold;
//! every earlier line's renames finished before the next line was written.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::sink::written::{format_marks, parse_marks, Marks};

/// The manifest is rewritten as its last positions past this size.
const COMPACT_AT: u64 = 1 << 20;

/// A file of a commit: its directory below the root and its stem
/// (`.<stem>.parquet.inprogress` becomes `<stem>.parquet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub dir: PathBuf,
    pub stem: String,
}

impl Pair {
    pub fn tmp(&self, root: &Path) -> PathBuf {
        root.join(&self.dir)
            .join(format!(".{}.parquet.inprogress", self.stem))
    }
    pub fn fin(&self, root: &Path) -> PathBuf {
        root.join(&self.dir).join(format!("{}.parquet", self.stem))
    }
}

#[derive(Debug)]
pub struct Manifest {
    root: PathBuf,
    path: PathBuf,
    file: Option<File>,
    bytes: u64,
}

impl Manifest {
    pub fn new(root: &Path, name: &str) -> Manifest {
        Manifest {
            root: root.to_path_buf(),
            path: root.join(format!(".{name}.commits")),
            file: None,
            bytes: 0,
        }
    }

    /// Finishes the last commit a crash cut (renames what it names) and
    /// returns its positions; none without a manifest.
    pub fn recover(&self) -> io::Result<Marks> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Marks::new()),
            Err(e) => return Err(self.named(e)),
        };
        let text = String::from_utf8_lossy(&text);
        // A line cut by a crash has no newline: none of its files were
        // renamed, and they are deleted as leftovers.
        let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
        let Some((marks, pairs)) = whole.lines().rev().find_map(parse) else {
            return Ok(Marks::new());
        };
        let mut dirs = Vec::new();
        for p in &pairs {
            let tmp = p.tmp(&self.root);
            if tmp.exists() {
                std::fs::rename(&tmp, p.fin(&self.root)).map_err(|e| self.named(e))?;
                dirs.push(self.root.join(&p.dir));
            }
        }
        if !dirs.is_empty() {
            tracing::warn!(path = %self.root.display(), files = dirs.len(), "Finished the commit a crash interrupted (renamed its complete files).");
        }
        sync_dirs(dirs)?;
        Ok(marks)
    }

    /// Appends and fsyncs the commit's line: `pairs` are closed and
    /// fsynced, `marks` the positions once they are renamed.
    pub fn append(&mut self, marks: &Marks, pairs: &[Pair]) -> io::Result<()> {
        let line = format_line(marks, pairs);
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.named(e))?;
            self.bytes = f.metadata()?.len();
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// After a commit's renames: rewrites a big manifest as its positions
    /// (by rename: a crash keeps either).
    pub fn compact_if_big(&mut self, marks: &Marks) -> io::Result<()> {
        if self.bytes <= COMPACT_AT {
            return Ok(());
        }
        let line = format_line(marks, &[]);
        let tmp = self.path.with_extension("commits.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(line.as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        sync_dirs(vec![self.root.clone()])?;
        self.file = None;
        self.bytes = line.len() as u64;
        Ok(())
    }

    fn named(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))
    }
}

/// Fsyncs each directory once.
pub fn sync_dirs(mut dirs: Vec<PathBuf>) -> io::Result<()> {
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        File::open(&d)
            .and_then(|f| f.sync_all())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", d.display())))?;
    }
    Ok(())
}

/// `marks dir:stem …`, directory and stem in hex (partition values may
/// hold spaces or newlines).
fn format_line(marks: &Marks, pairs: &[Pair]) -> String {
    let mut s = format_marks(marks);
    for p in pairs {
        s.push(' ');
        s.push_str(&hex(p.dir.as_os_str().as_encoded_bytes()));
        s.push(':');
        s.push_str(&hex(p.stem.as_bytes()));
    }
    s.push('\n');
    s
}

fn parse(line: &str) -> Option<(Marks, Vec<Pair>)> {
    let mut f = line.split(' ');
    let marks = parse_marks(f.next()?)?;
    let pairs = f
        .map(|p| {
            let (dir, stem) = p.split_once(':')?;
            let dir = String::from_utf8(unhex(dir)?).ok()?;
            let stem = String::from_utf8(unhex(stem)?).ok()?;
            // Never outside the root: written by this sink only, but read
            // from disk.
            let safe = !dir.starts_with('/') && !dir.split('/').any(|c| c == "..");
            (safe && !stem.contains('/')).then(|| Pair {
                dir: dir.into(),
                stem,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((marks, pairs))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &str, stem: &str) -> Pair {
        Pair {
            dir: dir.into(),
            stem: stem.into(),
        }
    }

    fn marks(seq: u64) -> Marks {
        Marks::from([(7, seq)])
    }

    #[test]
    fn the_last_commit_is_rolled_forward_and_its_positions_hold() {
        let dir = testkit::TempDir::new().unwrap();
        let root = dir.path();
        let a = pair("dt=x y\nz", "s-1");
        let b = pair("", "s-2");
        std::fs::create_dir_all(root.join(&a.dir)).unwrap();
        let mut m = Manifest::new(root, "s");
        m.append(&marks(9), &[pair("", "s-0")]).unwrap();
        for p in [&a, &b] {
            std::fs::write(p.tmp(root), "rows").unwrap();
        }
        m.append(&marks(19), &[a.clone(), b.clone()]).unwrap();
        // The crash came after renaming `a` only.
        std::fs::rename(a.tmp(root), a.fin(root)).unwrap();
        let got = Manifest::new(root, "s").recover().unwrap();
        assert_eq!(got, marks(19));
        assert!(a.fin(root).exists() && b.fin(root).exists());
        assert!(!b.tmp(root).exists());
        // Again (a second crash during recovery): nothing changes.
        assert_eq!(Manifest::new(root, "s").recover().unwrap(), marks(19));
    }

    #[test]
    fn a_torn_line_is_no_commit_and_missing_files_are_skipped() {
        let dir = testkit::TempDir::new().unwrap();
        let root = dir.path();
        let mut m = Manifest::new(root, "s");
        // Its files were deleted by the user since: nothing to rename.
        m.append(&marks(9), &[pair("gone", "s-0")]).unwrap();
        let path = root.join(".s.commits");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("0000000000000007:19 ");
        std::fs::write(&path, &text).unwrap();
        std::fs::write(pair("", "s-1").tmp(root), "rows").unwrap();
        assert_eq!(Manifest::new(root, "s").recover().unwrap(), marks(9));
        // The torn commit's file is not renamed (it is a leftover).
        assert!(pair("", "s-1").tmp(root).exists());
        assert!(!pair("", "s-1").fin(root).exists());
        // No manifest, or garbage: no positions.
        assert_eq!(Manifest::new(root, "t").recover().unwrap(), Marks::new());
        std::fs::write(&path, "junk\n").unwrap();
        assert_eq!(Manifest::new(root, "s").recover().unwrap(), Marks::new());
    }

    #[test]
    fn a_line_naming_a_file_outside_the_root_is_no_commit() {
        let line = format_line(&marks(3), &[pair("../x", "s")]);
        assert_eq!(parse(line.trim_end()), None);
        let line = format_line(&marks(3), &[pair("a/b", "s-1")]);
        assert_eq!(
            parse(line.trim_end()),
            Some((marks(3), vec![pair("a/b", "s-1")]))
        );
    }

    #[test]
    fn the_manifest_is_compacted_to_its_positions() {
        let dir = testkit::TempDir::new().unwrap();
        let root = dir.path();
        let mut m = Manifest::new(root, "s");
        let many: Vec<Pair> = (0..100)
            .map(|i| pair("dt=2026-12-07", &format!("s-{i}")))
            .collect();
        for i in 0..300 {
            m.append(&marks(i), &many).unwrap();
            m.compact_if_big(&marks(i)).unwrap();
        }
        let len = std::fs::metadata(root.join(".s.commits")).unwrap().len();
        assert!(len <= COMPACT_AT + 10_000, "{len}");
        assert_eq!(Manifest::new(root, "s").recover().unwrap(), marks(299));
    }
}
