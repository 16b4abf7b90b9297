//! Reading the ServerApp's log as `StreamLogs` delivers it: chunks that need not end at a line
//! break, turned into round progress and the per-round metrics.
//!
//! The lines it looks for (written by [`flwr::server::FedAvg`] and
//! [`flwr_examples::logreg::LogRegServerApp`]):
//!
//! ```text
//! ... INFO ...: [ROUND 2]                                   round 2 began
//! ... INFO ...: round 2: evaluation loss 0.55, metrics {..} round 2 ended
//! ... INFO ...: [HISTORY] round=2 train_loss=0.53 eval_loss=0.55 eval_accuracy=0.74
//! ```
//!
//! The `[HISTORY]` lines come once the last round is over, one per round.

use std::collections::BTreeMap;

use flwr_examples::logreg::RoundSummary;

/// Progress found in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// A round began.
    Began(u64),
    /// A round ended.
    Ended(u64),
    /// The run started over at round 1: another ServerApp took the run up (a SuperLink
    /// replica took over the run of a replica that died). Rounds are reported again from 1.
    Restarted,
}

/// The log of one run, fed chunk by chunk.
#[derive(Debug, Default)]
pub(crate) struct RunLog {
    /// The unfinished last line.
    partial: String,
    /// The highest round seen beginning.
    began: u64,
    /// The highest round seen ending.
    ended: u64,
    /// `[HISTORY]` lines by round.
    history: BTreeMap<u64, RoundSummary>,
    /// How many times the run started over.
    restarts: u32,
}

impl RunLog {
    /// Adds a chunk; returns the progress it revealed, in order.
    pub(crate) fn push(&mut self, chunk: &str) -> Vec<Progress> {
        self.partial.push_str(chunk);
        let mut progress = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            self.line(line.trim_end(), &mut progress);
        }
        progress
    }

    /// Reads what is left after the last chunk (a final line without a line break).
    pub(crate) fn finish(&mut self) -> Vec<Progress> {
        let rest = std::mem::take(&mut self.partial);
        let mut progress = Vec::new();
        self.line(rest.trim_end(), &mut progress);
        progress
    }

    /// How many times the run started over at round 1 ([`Progress::Restarted`]).
    pub(crate) fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The `[HISTORY]` rounds, in round order.
    pub(crate) fn history(&self) -> Vec<RoundSummary> {
        self.history.values().copied().collect()
    }

    fn line(&mut self, line: &str, progress: &mut Vec<Progress>) {
        if let Some(round) = began(line) {
            if round == 1 && self.began >= 1 {
                // Only a new ServerApp numbers from 1 again (the stream never repeats lines).
                self.began = 0;
                self.ended = 0;
                self.restarts += 1;
                progress.push(Progress::Restarted);
            }
            // A round beginning means the one before it is over, even if its evaluation
            // line was missing (no client evaluated).
            self.end_through(round.saturating_sub(1), progress);
            if round > self.began {
                self.began = round;
                progress.push(Progress::Began(round));
            }
        } else if let Some(round) = ended(line) {
            self.end_through(round, progress);
        } else if let Some(summary) = RoundSummary::parse(line).filter(|s| s.round > 0) {
            self.end_through(summary.round, progress);
            self.history.insert(summary.round, summary);
        }
    }

    fn end_through(&mut self, round: u64, progress: &mut Vec<Progress>) {
        while self.ended < round {
            self.ended += 1;
            progress.push(Progress::Ended(self.ended));
        }
    }
}

/// `n` of a `[ROUND n]` line.
fn began(line: &str) -> Option<u64> {
    let rest = &line[line.find("[ROUND ")? + "[ROUND ".len()..];
    rest.strip_suffix(']')?.parse().ok()
}

/// `n` of a `round n: evaluation loss ...` line.
fn ended(line: &str) -> Option<u64> {
    let at = line.find(": evaluation loss ")?;
    let head = &line[..at];
    let number = &head[head.rfind("round ")? + "round ".len()..];
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2025-01-01T00:00:00Z  INFO flwr::server::fedavg: [INIT]
2025-01-01T00:00:00Z  INFO flwr::server::fedavg: 
2025-01-01T00:00:00Z  INFO flwr::server::fedavg: [ROUND 1]
2025-01-01T00:00:01Z  INFO flwr::server::fedavg: round 1: evaluation loss 0.6, metrics {\"accuracy\": Double(0.7)}
2025-01-01T00:00:01Z  INFO flwr::server::fedavg: [ROUND 2]
2025-01-01T00:00:02Z  INFO flwr::server::fedavg: round 2: evaluation loss 0.5, metrics {}
2025-01-01T00:00:02Z  INFO flwr::server::fedavg: [SUMMARY] Run finished 2 round(s) in 2.00s
2025-01-01T00:00:02Z  INFO flwr::server::fedavg: \tround 1: loss (distributed) 0.6
2025-01-01T00:00:02Z  INFO flwr_examples::logreg: [HISTORY] round=1 train_loss=0.610000 eval_loss=0.600000 eval_accuracy=0.700000
2025-01-01T00:00:02Z  INFO flwr_examples::logreg: [HISTORY] round=2 train_loss=0.510000 eval_loss=0.500000 eval_accuracy=nan
";

    #[test]
    fn chunks_split_anywhere_give_the_same_result() {
        for size in [1, 7, 64, LOG.len()] {
            let mut log = RunLog::default();
            let mut progress = Vec::new();
            let bytes: Vec<char> = LOG.chars().collect();
            for chunk in bytes.chunks(size) {
                progress.extend(log.push(&chunk.iter().collect::<String>()));
            }
            progress.extend(log.finish());
            assert_eq!(
                progress,
                [
                    Progress::Began(1),
                    Progress::Ended(1),
                    Progress::Began(2),
                    Progress::Ended(2)
                ],
                "chunk size {size}"
            );
            let history = log.history();
            assert_eq!(history.len(), 2);
            assert_eq!(history[0].eval_accuracy, Some(0.7));
            assert_eq!(history[1].train_loss, Some(0.51));
            assert_eq!(history[1].eval_accuracy, None);
        }
    }

    #[test]
    fn a_missing_evaluation_line_still_ends_the_round() {
        let mut log = RunLog::default();
        let progress = log.push("[ROUND 1]\n[ROUND 2]\n[HISTORY] round=2 train_loss=0.5");
        assert_eq!(
            progress,
            [Progress::Began(1), Progress::Ended(1), Progress::Began(2)]
        );
        assert_eq!(log.finish(), [Progress::Ended(2)]);
    }

    #[test]
    fn a_second_serverapp_restarts_the_rounds() {
        let mut log = RunLog::default();
        let mut progress = log.push("[ROUND 1]\nround 1: evaluation loss 0.6, metrics {}\n");
        progress
            .extend(log.push("[ROUND 2]\nround 2: evaluation loss 0.5, metrics {}\n[ROUND 3]\n"));
        progress.extend(log.push("[INIT]\n[ROUND 1]\nround 1: evaluation loss 0.6, metrics {}\n"));
        assert_eq!(
            progress,
            [
                Progress::Began(1),
                Progress::Ended(1),
                Progress::Began(2),
                Progress::Ended(2),
                Progress::Began(3),
                Progress::Restarted,
                Progress::Began(1),
                Progress::Ended(1),
            ]
        );
        assert_eq!(log.restarts(), 1);
    }

    #[test]
    fn other_lines_are_ignored() {
        let mut log = RunLog::default();
        assert!(log
            .push("[ROUND x]\nround y: evaluation loss 1\nStarting run 1\n[HISTORY] junk\n")
            .is_empty());
        assert!(log.history().is_empty());
    }
}
