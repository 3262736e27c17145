//! Shards of a sweep and their merge: which cells shard `I/N` evaluates, and how the shards'
//! run folders become the run folder of the whole sweep.
//!
//! A shard is a contiguous range of the sweep's cells in their canonical order, cut at
//! multiples of the batch size (so a shard's resume granularity is the whole run's). Every
//! shard lists the *whole* run's cells and encodes its images in the whole run's fixed image
//! batches (an image batch at a shard boundary is encoded by both neighbours), so each record a
//! shard writes is bit-identical to the record an unsharded run writes for that cell.
//! [`merge_shards`] concatenates the shards' `records.jsonl` in shard order — the canonical
//! order — and summarises them with [`SweepSummary::from_records`], the one place records
//! become a summary: the merged `summary.json` is byte-identical to an unsharded run's.
//!
//! Shard `I/N` of the run folder `OUT` lives in `OUT/shards/I-of-N/`, a run folder of its own
//! (records, summary of its part, provenance with a `shard` entry), which resumes like any
//! other.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::provenance::Provenance;
use super::{io_err, SweepError, SweepSummary};
use crate::records::{parse_jsonl, Record};

/// Shard `index` of `count` (zero-based: `0/4` … `3/4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which shard, `0..count`.
    pub index: usize,
    /// How many shards the sweep is cut into.
    pub count: usize,
}

impl Shard {
    /// Parses `I/N` (`0 ≤ I < N`); the error names what is wrong.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not I/N (e.g. 0/4)"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: shard index `{i}` is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: shard count `{n}` is not a number"))?;
        if count == 0 {
            return Err(format!("`{s}`: the shard count must be at least 1"));
        }
        if index >= count {
            return Err(format!(
                "`{s}`: shard index must be below the count (0 to {})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// The cells of this shard among `cells` cells cut in batches of `batch_size`: the whole
    /// batches `⌊index·B/count⌋ .. ⌊(index+1)·B/count⌋` of the `B` batches (balanced to one
    /// batch; empty when there are fewer batches than shards).
    pub fn cell_range(self, cells: usize, batch_size: usize) -> Range<usize> {
        let batches = cells.div_ceil(batch_size.max(1));
        let first = self.index * batches / self.count;
        let end = (self.index + 1) * batches / self.count;
        (first * batch_size).min(cells)..(end * batch_size).min(cells)
    }

    /// The shard's run folder inside the run folder `out`.
    pub fn dir(self, out: &Path) -> PathBuf {
        out.join("shards")
            .join(format!("{}-of-{}", self.index, self.count))
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What a shard's `provenance.json` says about its part of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Shard index.
    pub index: usize,
    /// Shard count.
    pub count: usize,
    /// First cell (in the whole run's canonical order).
    pub first_cell: usize,
    /// One past the last cell.
    pub end_cell: usize,
}

/// How far one shard's run folder has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardState {
    /// No run folder or no provenance yet.
    Pending,
    /// Started: `done` of `total` records written.
    Partial {
        /// Records written.
        done: usize,
        /// Records of the shard.
        total: usize,
    },
    /// Every record written and the run marked finished.
    Done {
        /// Records of the shard.
        total: usize,
    },
}

/// The state of shard folder `dir`, read from its provenance and records.
pub fn shard_state(dir: &Path) -> Result<ShardState, SweepError> {
    let prov_path = dir.join("provenance.json");
    if !prov_path.exists() {
        return Ok(ShardState::Pending);
    }
    let prov = read_provenance(&prov_path)?;
    let total = match prov.shard {
        Some(s) => s.end_cell - s.first_cell,
        None => prov.cells,
    };
    let records_path = dir.join("records.jsonl");
    let done = match std::fs::read_to_string(&records_path) {
        Ok(text) => parse_jsonl(&text).0.len(),
        Err(_) => 0,
    };
    Ok(if done >= total && prov.finished.is_some() {
        ShardState::Done { total }
    } else {
        ShardState::Partial { done, total }
    })
}

fn read_provenance(path: &Path) -> Result<Provenance, SweepError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| io_err(path, format!("unreadable provenance: {e}")))
}

/// The shard folders of run folder `out` (`out/shards/I-of-N`), by index; an entry that does
/// not parse, or shard counts that disagree, is an error naming the folder.
pub fn shard_dirs(out: &Path) -> Result<Vec<(Shard, PathBuf)>, SweepError> {
    let root = out.join("shards");
    let entries = std::fs::read_dir(&root).map_err(|e| io_err(&root, e))?;
    let mut found = Vec::new();
    for e in entries {
        let path = e.map_err(|e| io_err(&root, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let shard = name
            .split_once("-of-")
            .map(|(i, n)| format!("{i}/{n}"))
            .and_then(|s| Shard::parse(&s).ok())
            .ok_or_else(|| io_err(&path, "not a shard folder (expected I-of-N)"))?;
        found.push((shard, path));
    }
    found.sort_by_key(|(s, _)| s.index);
    if let Some((first, _)) = found.first() {
        if let Some((_, p)) = found.iter().find(|(s, _)| s.count != first.count) {
            return Err(io_err(
                p,
                format!("shard count differs from the other shards' {}", first.count),
            ));
        }
    }
    Ok(found)
}

/// Merges the finished shards of run folder `out` into `out` itself: `records.jsonl` (the
/// shards' records in shard order), `summary.json` / `.csv` (and the linear probe's), and
/// `provenance.json` (the shards' common provenance, no `shard` entry, `merged_shards` set,
/// the earliest start and latest finish). Refuses — naming the shard's file and what is
/// wrong — a missing or unfinished shard, shards of different runs, or an `out` that holds an
/// unsharded run. Returns the summary.
pub fn merge_shards(out: &Path) -> Result<SweepSummary, SweepError> {
    let shards = shard_dirs(out)?;
    let Some((first, _)) = shards.first() else {
        return Err(SweepError::Empty(format!(
            "{}: no shard folders to merge",
            out.join("shards").display()
        )));
    };
    let own = out.join("provenance.json");
    if own.exists() && read_provenance(&own)?.merged_shards.is_none() {
        return Err(io_err(
            &own,
            "holds an unsharded run; merge shards into a run folder of their own",
        ));
    }
    let count = first.count;
    for i in 0..count {
        if !shards.iter().any(|(s, _)| s.index == i) {
            return Err(SweepError::Empty(format!(
                "{}: shard {i}/{count} is missing",
                Shard { index: i, count }.dir(out).display()
            )));
        }
    }
    let mut records: Vec<Record> = Vec::new();
    let mut merged: Option<Provenance> = None;
    let mut next_cell = 0;
    for (shard, dir) in &shards {
        let prov_path = dir.join("provenance.json");
        if !prov_path.exists() {
            return Err(io_err(&prov_path, "shard not started"));
        }
        let prov = read_provenance(&prov_path)?;
        let Some(rec) = prov.shard else {
            return Err(io_err(
                &prov_path,
                "shard: absent (not a shard's run folder)",
            ));
        };
        if (rec.index, rec.count) != (shard.index, shard.count) {
            return Err(io_err(
                &prov_path,
                format!(
                    "shard: {}/{} in a folder named for {shard}",
                    rec.index, rec.count
                ),
            ));
        }
        if rec.first_cell != next_cell {
            return Err(io_err(
                &prov_path,
                format!(
                    "shard.first_cell: {} where the previous shard ended at {next_cell}",
                    rec.first_cell
                ),
            ));
        }
        if prov.finished.is_none() {
            return Err(io_err(&prov_path, "finished: absent (shard not finished)"));
        }
        let records_path = dir.join("records.jsonl");
        let text = std::fs::read_to_string(&records_path).map_err(|e| io_err(&records_path, e))?;
        let (part, _) = parse_jsonl(&text);
        if part.len() != rec.end_cell - rec.first_cell {
            return Err(io_err(
                &records_path,
                format!(
                    "{} records where the shard has {} cells (shard not finished)",
                    part.len(),
                    rec.end_cell - rec.first_cell
                ),
            ));
        }
        next_cell = rec.end_cell;
        records.extend(part);
        let unsharded = Provenance {
            shard: None,
            ..prov
        };
        match &mut merged {
            None => merged = Some(unsharded),
            Some(m) => {
                unsharded.check_same_run(m, &prov_path)?;
                if unsharded.started < m.started {
                    m.started = unsharded.started.clone();
                }
                if unsharded.finished > m.finished {
                    m.finished = unsharded.finished.clone();
                }
            }
        }
    }
    let mut merged = merged.expect("at least one shard");
    if next_cell != merged.cells {
        return Err(io_err(
            &shards[count - 1].1.join("provenance.json"),
            format!(
                "shard.end_cell: {next_cell} where the run has {} cells",
                merged.cells
            ),
        ));
    }
    merged.merged_shards = Some(count);
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let lines: String = records.iter().map(|r| r.to_json_line() + "\n").collect();
    super::write_atomic(&out.join("records.jsonl"), lines.as_bytes())?;
    let summary = super::write_run_summary(out, &merged, &records)?;
    merged.write(&out.join("provenance.json"))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_i_of_n_and_names_what_is_wrong() {
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert!(Shard::parse("4/4").unwrap_err().contains("below the count"));
        assert!(Shard::parse("0/0").unwrap_err().contains("at least 1"));
        assert!(Shard::parse("a/4").unwrap_err().contains("index `a`"));
        assert!(Shard::parse("3").unwrap_err().contains("not I/N"));
    }

    #[test]
    fn ranges_partition_the_cells_at_batch_boundaries() {
        for cells in [0usize, 1, 15, 16, 17, 100, 161] {
            for batch in [1usize, 4, 16] {
                for count in 1..=7 {
                    let ranges: Vec<_> = (0..count)
                        .map(|index| Shard { index, count }.cell_range(cells, batch))
                        .collect();
                    let mut next = 0;
                    for r in &ranges {
                        assert_eq!(r.start, next, "{cells} cells, batch {batch}, {count}");
                        assert!(r.start % batch == 0 || r.start == cells);
                        next = r.end;
                    }
                    assert_eq!(next, cells);
                    // Balanced: sizes differ by at most one batch.
                    let sizes: Vec<usize> =
                        ranges.iter().map(|r| r.len().div_ceil(batch)).collect();
                    let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    assert!(hi - lo <= 1, "{sizes:?}");
                }
            }
        }
    }
}
