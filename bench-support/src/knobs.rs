//! The benches' knobs: environment variables such as
//! `LOCKSTEP_BENCH_RUNS`, `LOCKSTEP_BENCH_QUICK` and lists like
//! `LOCKSTEP_BENCH_AGENTS=10,1_000`.

use std::str::FromStr;

/// `var` parsed as a `T` (`_` allowed in numbers), or `default` where it
/// is unset or does not parse.
pub fn env_or<T: FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// `var` as a comma-separated list of `T` (items that do not parse are
/// skipped; `_` allowed in numbers), or `default` where it is unset.
pub fn env_list<T: FromStr>(var: &str, default: Vec<T>) -> Vec<T> {
    std::env::var(var).map_or(default, |v| parse_list(&v))
}

fn parse_list<T: FromStr>(v: &str) -> Vec<T> {
    v.split(',')
        .filter_map(|x| x.trim().replace('_', "").parse().ok())
        .collect()
}

/// Whether `var` is set to something other than empty or `0`.
pub fn env_flag(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `LOCKSTEP_BENCH_QUICK`: a short smoke run instead of the measurement.
pub fn quick() -> bool {
    env_flag("LOCKSTEP_BENCH_QUICK")
}

/// Whether the binary was started without `--bench` (as `cargo test
/// --benches` starts it): benches that honour it then run quick.
pub fn run_as_test() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(
            parse_list::<u64>("10, 1_000,x,100000"),
            vec![10, 1000, 100_000]
        );
        assert_eq!(parse_list::<String>("run,msg"), vec!["run", "msg"]);
        assert_eq!(
            env_list("LOCKSTEP_BENCH_SUPPORT_UNSET_LIST", vec![1u8, 2]),
            vec![1, 2]
        );
        assert_eq!(env_or("LOCKSTEP_BENCH_SUPPORT_UNSET", 3usize), 3);
        assert!(!env_flag("LOCKSTEP_BENCH_SUPPORT_UNSET"));
    }
}
