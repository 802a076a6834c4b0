//! What a benchmark run records: its headline rows (metric, target, measured, met) with the
//! machine, date, commit and load average of the run, written to
//! `docs/benchmarks/results/<bench>.json`. `scripts/bench` renders `docs/benchmarks.md` from
//! those files (`prx-ci-bench-table`), so the summary table is never edited by hand.
//!
//! ```no_run
//! use prx_ci_shared::testing::bench::{BenchRun, Row};
//! let mut run = BenchRun::start("ingress");
//! run.row(Row::new("ingress throughput, 64 connections", "≥ 15,000 /s")
//!     .measured("21,325 /s")
//!     .met(true));
//! run.finish().unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// One headline figure of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// What is measured, exactly as measured (e.g. "history of one branch, p95, 1,000,000 events").
    pub metric: String,
    /// The target the issue sets, or "-" for a figure without one.
    pub target: String,
    /// The figure.
    pub measured: String,
    /// Whether the target was met; `None` for a figure without a target.
    pub met: Option<bool>,
    /// The page with the method and every run (relative to `docs/`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl Row {
    pub fn new(metric: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            metric: metric.into(),
            target: target.into(),
            measured: String::new(),
            met: None,
            details: None,
        }
    }

    pub fn measured(mut self, measured: impl Into<String>) -> Self {
        self.measured = measured.into();
        self
    }

    pub fn met(mut self, met: bool) -> Self {
        self.met = Some(met);
        self
    }

    /// Link to the bench's page, relative to `docs/` (e.g. `benchmarks/ingress.md`).
    pub fn details(mut self, page: impl Into<String>) -> Self {
        self.details = Some(page.into());
        self
    }
}

/// Where and when a run happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunContext {
    /// UTC, RFC 3339, at the start of the run.
    pub date: String,
    /// `git rev-parse --short HEAD`, with `-dirty` when the work tree had changes.
    pub commit: String,
    /// CPU model and count, memory, kernel.
    pub machine: String,
    /// `/proc/loadavg`'s 1-minute figure at the start and at the end.
    pub load_start: f64,
    pub load_end: f64,
}

/// One bench's recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    /// The name `scripts/bench` knows it by.
    pub bench: String,
    pub context: RunContext,
    pub rows: Vec<Row>,
}

/// A run in progress.
#[derive(Debug)]
pub struct BenchRun {
    record: BenchRecord,
}

impl BenchRun {
    /// Starts a run: notes the date, commit, machine and load average now.
    pub fn start(bench: &str) -> Self {
        Self {
            record: BenchRecord {
                bench: bench.to_owned(),
                context: RunContext {
                    date: now_rfc3339(),
                    commit: commit(),
                    machine: machine(),
                    load_start: load_average(),
                    load_end: 0.0,
                },
                rows: Vec::new(),
            },
        }
    }

    pub fn row(&mut self, row: Row) -> &mut Self {
        self.record.rows.push(row);
        self
    }

    /// Ends the run and writes `docs/benchmarks/results/<bench>.json` (or under
    /// `$PRX_BENCH_RESULTS`, when set). Returns the path written.
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        self.record.context.load_end = load_average();
        let dir = std::env::var_os("PRX_BENCH_RESULTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| super::workspace_root().join("docs/benchmarks/results"));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", self.record.bench));
        let text = serde_json::to_string_pretty(&self.record)? + "\n";
        std::fs::write(&path, text)?;
        eprintln!("recorded {}", path.display());
        Ok(path)
    }
}

/// The `p`-quantile (`0.0..=1.0`) of `sorted` (ascending) by nearest rank: the smallest value
/// with at least `p` of the samples at or below it. The one percentile every bench reports.
///
/// # Panics
/// On an empty slice: a bench with no samples has nothing to report.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Reads every record in `dir`, sorted by bench name.
pub fn read_records(dir: &Path) -> anyhow::Result<Vec<BenchRecord>> {
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let record: BenchRecord = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            records.push(record);
        }
    }
    records.sort_by(|a, b| a.bench.cmp(&b.bench));
    Ok(records)
}

/// The summary table: one line per row, each with its run's date, commit and load.
pub fn render_table(records: &[BenchRecord]) -> String {
    let mut out = String::from(
        "| bench | metric | target | measured | met? | run (UTC date, commit, load 1-min start→end) |\n\
         |---|---|---|---|---|---|\n",
    );
    for record in records {
        let c = &record.context;
        let run = format!(
            "{}, `{}`, {:.2}→{:.2}",
            c.date, c.commit, c.load_start, c.load_end
        );
        for row in &record.rows {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            let metric = match &row.details {
                Some(page) => format!("[{}]({page})", cell(&row.metric)),
                None => cell(&row.metric),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                record.bench,
                metric,
                cell(&row.target),
                cell(&row.measured),
                met,
                run
            ));
        }
    }
    out
}

/// The machines the records were taken on, one line each.
pub fn render_machines(records: &[BenchRecord]) -> String {
    let mut machines: Vec<&str> = records.iter().map(|r| r.context.machine.as_str()).collect();
    machines.sort_unstable();
    machines.dedup();
    machines.iter().map(|m| format!("- {m}\n")).collect()
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(super::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Recorded results themselves do not make a tree dirty.
    let dirty = git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!docs/benchmarks",
        ":!docs/benchmarks.md",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| (kb + 512 * 1024) / (1024 * 1024));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs, {mem_gib} GiB, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bench: &str, rows: Vec<Row>) -> BenchRecord {
        BenchRecord {
            bench: bench.to_owned(),
            context: RunContext {
                date: "2026-12-01T05:00:00Z".to_owned(),
                commit: "abc1234".to_owned(),
                machine: "Test CPU, 2 CPUs, 24 GiB, Linux 6.1".to_owned(),
                load_start: 0.5,
                load_end: 1.25,
            },
            rows,
        }
    }

    #[test]
    fn the_table_has_one_line_per_row_with_its_run() {
        let records = vec![record(
            "ops",
            vec![
                Row::new("history p95 | 1M", "< 20 ms")
                    .measured("4.1 ms")
                    .met(true)
                    .details("benchmarks/ops.md"),
                Row::new("rebuild", "-").measured("30 s"),
            ],
        )];
        let table = render_table(&records);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[2],
            "| ops | [history p95 \\| 1M](benchmarks/ops.md) | < 20 ms | 4.1 ms | yes | \
             2026-12-01T05:00:00Z, `abc1234`, 0.50→1.25 |"
        );
        assert!(lines[3].contains("| 30 s | - |"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.5), 50);
        assert_eq!(percentile(&samples, 0.99), 99);
        assert_eq!(percentile(&samples, 1.0), 100);
        assert_eq!(percentile(&samples, 0.0), 1);
        assert_eq!(percentile(&[7], 0.99), 7);
    }

    #[test]
    fn a_run_writes_a_record_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        let written = record("x", vec![Row::new("m", "t").measured("v").met(false)]);
        std::fs::write(&path, serde_json::to_string(&written).unwrap()).unwrap();
        assert_eq!(read_records(dir.path()).unwrap(), vec![written]);
    }
}
