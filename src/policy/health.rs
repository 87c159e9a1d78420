//! When health checks flip a server: `rise` passes in a row bring a down
//! server up, `fall` failures in a row take an up one down.

/// What a check result does to a server's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Same,
    Up,
    Down,
}

/// The high bit of a row: its results are passes.
const PASS: u32 = 1 << 31;

/// The results in a row after one more (`passed`), and the verdict for a
/// server that is `up` now. `row` is what the previous call returned (0:
/// no result yet).
pub fn next(row: u32, passed: bool, up: bool, rise: usize, fall: usize) -> (u32, Verdict) {
    let same_kind = row != 0 && ((row & PASS != 0) == passed);
    let count = if same_kind {
        ((row & !PASS) + 1).min(PASS - 1)
    } else {
        1
    };
    let enough = |n: usize| usize::try_from(count).is_ok_and(|c| c >= n.max(1));
    let verdict = match (up, passed) {
        (false, true) if enough(rise) => Verdict::Up,
        (true, false) if enough(fall) => Verdict::Down,
        _ => Verdict::Same,
    };
    (count | if passed { PASS } else { 0 }, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdicts of a series of results from a start in `up`.
    fn run(up: bool, results: &[bool], rise: usize, fall: usize) -> Vec<Verdict> {
        let (mut row, mut up) = (0, up);
        results
            .iter()
            .map(|&passed| {
                let (r, v) = next(row, passed, up, rise, fall);
                row = r;
                match v {
                    Verdict::Up => up = true,
                    Verdict::Down => up = false,
                    Verdict::Same => {}
                }
                v
            })
            .collect()
    }

    use Verdict::{Down, Same, Up};

    #[test]
    fn rise_passes_in_a_row_bring_a_server_up() {
        assert_eq!(run(false, &[true, true], 2, 3), [Same, Up]);
        // A failure between passes starts the count again.
        assert_eq!(
            run(false, &[true, false, true, true], 2, 3),
            [Same, Same, Same, Up]
        );
        assert_eq!(run(false, &[true], 1, 3), [Up]);
    }

    #[test]
    fn fall_failures_in_a_row_take_a_server_down() {
        assert_eq!(
            run(true, &[false, false, true, false, false, false], 2, 3),
            [Same, Same, Same, Same, Same, Down]
        );
        // Once down, more failures change nothing; then it needs rise.
        assert_eq!(
            run(true, &[false, false, true, true], 2, 1),
            [Down, Same, Same, Up]
        );
    }

    #[test]
    fn a_long_row_does_not_wrap() {
        let (mut row, mut v) = (0, Same);
        for _ in 0..5 {
            (row, v) = next(row, true, true, 2, 3);
        }
        assert_eq!((row & !PASS, v), (5, Same));
        let (row, _) = next(PASS | (PASS - 1), true, true, 2, 3);
        assert_eq!(row, PASS | (PASS - 1));
        // A zero rise or fall counts as one.
        assert_eq!(next(0, false, true, 0, 0).1, Down);
    }
}
