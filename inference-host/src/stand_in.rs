//! TEST-ONLY stand-in for a GPU's last-bit differences (cargo feature
//! `fault-injection`; absent from release builds).  It is not a GPU and
//! computes nothing on one: it lets the tests of tolerance-aware `verify`
//! run on machines without a GPU.
//!
//! `LOCKSTEP_INFERENCE_INJECT=device=NAME,ulps=K` (the supervisor of a
//! test build passes the variable on to its host) makes the host
//!
//! * report `NAME` (e.g. `cuda:0`) as the device of every model it loads
//!   and of every batch it answers, so that the supervisor journals the
//!   answers as that device's, bytes included;
//! * move every finite `f32` element of every answer by `K` ulps (one by
//!   default) — away from zero at even flat indices, towards it at odd
//!   ones (away where the magnitude is below `K` ulps) — deterministically,
//!   as a GPU's kernels differ from the CPU's in the last bits.
//!
//! NaNs and infinities are left alone; tensors of other dtypes and errors
//! are unchanged.  A run made with the stand-in and verified without it
//! sees answers from "another device" that differ by `K` ulps; verified
//! with it, the same device, bitwise.

use shm_protocol::inference::{DType, Tensor};
use std::sync::OnceLock;

/// The variable holding the directives.
pub const VAR: &str = "LOCKSTEP_INFERENCE_INJECT";

/// The stand-in's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandIn {
    /// The device reported.
    pub device: String,
    /// Ulps each `f32` element moves.
    pub ulps: u32,
}

impl StandIn {
    /// Parses `device=NAME,ulps=K` (`None` without a device).
    pub fn parse(v: &str) -> Option<Self> {
        let mut device = None;
        let mut ulps = 1;
        for d in v.split(',') {
            match d.trim().split_once('=') {
                Some(("device", name)) if !name.is_empty() => device = Some(name.to_owned()),
                Some(("ulps", k)) => ulps = k.parse().ok()?,
                _ => {}
            }
        }
        Some(Self {
            device: device?,
            ulps,
        })
    }

    /// The stand-in `LOCKSTEP_INFERENCE_INJECT` asks for, read once.
    pub fn get() -> Option<&'static StandIn> {
        static ONCE: OnceLock<Option<StandIn>> = OnceLock::new();
        ONCE.get_or_init(|| {
            let s = std::env::var(VAR).ok().and_then(|v| Self::parse(&v));
            if let Some(s) = &s {
                tracing::warn!(
                    device = %s.device,
                    ulps = s.ulps,
                    "TEST-ONLY device stand-in: answers are reported as another device's and perturbed"
                );
            }
            s
        })
        .as_ref()
    }

    /// `t` with every finite `f32` element moved by [`StandIn::ulps`].
    pub fn perturb(&self, t: Tensor) -> Tensor {
        if t.dtype() != DType::F32 {
            return t;
        }
        let (dtype, shape, mut data) = t.into_parts();
        for (i, c) in data.chunks_exact_mut(4).enumerate() {
            let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let y = self.moved(x, i % 2 == 0);
            c.copy_from_slice(&y.to_le_bytes());
        }
        Tensor::new(dtype, shape, data).expect("same dtype, shape and length")
    }

    fn moved(&self, x: f32, away: bool) -> f32 {
        if !x.is_finite() {
            return x;
        }
        let bits = x.to_bits();
        let (sign, mag) = (bits & 0x8000_0000, bits & 0x7FFF_FFFF);
        let up = mag.checked_add(self.ulps).filter(|m| *m < 0x7F80_0000);
        let down = mag.checked_sub(self.ulps);
        let mag = match (away, up, down) {
            (true, Some(m), _) | (false, _, Some(m)) | (_, Some(m), None) | (_, None, Some(m)) => m,
            (_, None, None) => mag,
        };
        f32::from_bits(sign | mag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_and_ulps() {
        assert_eq!(
            StandIn::parse("device=cuda:0,ulps=3"),
            Some(StandIn {
                device: "cuda:0".into(),
                ulps: 3
            })
        );
        assert_eq!(StandIn::parse("device=cuda:1").map(|s| s.ulps), Some(1));
        assert_eq!(StandIn::parse("ulps=3"), None);
        assert_eq!(StandIn::parse("device=cuda:0,ulps=x"), None);
    }

    #[test]
    fn moves_f32_elements_by_k_ulps_and_leaves_the_rest() {
        let s = StandIn {
            device: "cuda:0".into(),
            ulps: 2,
        };
        let v = [1.0f32, 1.0, -3.5, 0.0, f32::NAN, f32::INFINITY, f32::MAX];
        let t = s.perturb(Tensor::from_slice(vec![v.len() as u64], &v).unwrap());
        let w: Vec<f32> = t.to_vec().unwrap();
        assert_eq!(w[0].to_bits(), 1.0f32.to_bits() + 2);
        assert_eq!(w[1].to_bits(), 1.0f32.to_bits() - 2);
        assert_eq!(w[2].to_bits(), (-3.5f32).to_bits() + 2, "away from zero");
        assert_eq!(w[3].to_bits(), 2, "below k ulps: away from zero");
        assert!(w[4].is_nan() && w[5] == f32::INFINITY);
        assert_eq!(w[6].to_bits(), f32::MAX.to_bits() - 2, "never to infinity");
        let i = Tensor::from_slice(vec![2], &[1i64, 2]).unwrap();
        assert_eq!(s.perturb(i.clone()), i);
    }
}
