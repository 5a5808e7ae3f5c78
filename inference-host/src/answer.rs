//! Answers to inference commands: running them on a registry's models
//! ([`handle`]) and keeping a reply within the size limit ([`fit_reply`]).

use lockstep_inference_host::{ModelRegistry, RssSampler};
use shm_protocol::control::Up;
use shm_protocol::inference::{InferenceCommand, InferenceReply, InferenceResult, Tensor};
use std::path::Path;
use std::sync::Mutex;

/// The process's resident set size (0 if the sampler is unusable).
pub fn rss_bytes(rss: &Mutex<RssSampler>) -> u64 {
    rss.lock().map_or(0, |mut r| r.rss_bytes())
}

/// Serves one inference command with the models of `registry`.
pub fn handle(
    registry: &mut ModelRegistry,
    rss: &Mutex<RssSampler>,
    cmd: InferenceCommand,
) -> InferenceReply {
    match cmd {
        InferenceCommand::LoadModel {
            id,
            version,
            source,
            bytes,
            blake3_hex,
        } => {
            match registry.load_model_bytes(&id, &version, Path::new(&source), &bytes, &blake3_hex)
            {
                Ok(m) => InferenceReply::Loaded {
                    device: reported_device(m.device().to_string()),
                    inputs: m.inputs().to_vec(),
                    outputs: m.outputs().to_vec(),
                    id,
                    version,
                },
                Err(e) => InferenceReply::LoadFailed {
                    id,
                    version,
                    error: e.to_string(),
                },
            }
        }
        InferenceCommand::UnloadModel { id, version } => {
            let versions = registry.unload_model(&id, version.as_deref());
            InferenceReply::Unloaded { id, versions }
        }
        InferenceCommand::Infer {
            batch_id,
            model_id,
            version,
            requests,
            max_batch,
        } => {
            let outcome = registry.batch_infer(&model_id, version.as_deref(), &requests, max_batch);
            let results: Vec<InferenceResult> = requests
                .iter()
                .zip(outcome.results)
                .map(|(r, out)| result(r.request_key, stand_in(out.map_err(|e| e.to_string()))))
                .collect();
            let mut telemetry = outcome.telemetry;
            telemetry.rss_bytes = rss_bytes(rss);
            telemetry.device = reported_device(telemetry.device);
            InferenceReply::Results {
                batch_id,
                results,
                telemetry,
            }
        }
        InferenceCommand::Status => InferenceReply::Status {
            models: registry.status(),
            rss_bytes: rss_bytes(rss),
            gpu_mem_bytes: None,
        },
    }
}

/// The device reported for answers computed on `device`: itself, unless
/// the test-only device stand-in ([`crate::stand_in`]) names another.
fn reported_device(device: String) -> String {
    #[cfg(feature = "fault-injection")]
    if let Some(s) = crate::stand_in::StandIn::get() {
        return s.device.clone();
    }
    device
}

/// An answer as reported: itself, unless the test-only device stand-in
/// ([`crate::stand_in`]) perturbs it.
fn stand_in(output: Result<Tensor, String>) -> Result<Tensor, String> {
    #[cfg(feature = "fault-injection")]
    if let Some(s) = crate::stand_in::StandIn::get() {
        return output.map(|t| s.perturb(t));
    }
    output
}

fn result(request_key: u64, output: Result<Tensor, String>) -> InferenceResult {
    let output_blake3 = match &output {
        Ok(t) => *blake3::hash(&t.encode_abi()).as_bytes(),
        Err(e) => *blake3::hash(e.as_bytes()).as_bytes(),
    };
    InferenceResult {
        request_key,
        output,
        output_blake3,
    }
}

/// Encoded size of a value (0 if it cannot be encoded, which the real send
/// would report anyway).
fn encoded_len<T: serde::Serialize>(v: &T) -> usize {
    shm_protocol::codec::encode(v).map_or(0, |b| b.len())
}

/// Keeps an `Infer` reply within [`shm_protocol::inference::MAX_REPLY`]
/// bytes (a fixed bound, so that which outputs are refused never depends on
/// a ring's size): outputs are replaced by errors, largest first; if even
/// that is not enough the whole batch is answered with [`Up::Error`].
pub fn fit_reply(reply: InferenceReply, max_reply: usize) -> Up {
    let InferenceReply::Results {
        batch_id,
        mut results,
        telemetry,
    } = reply
    else {
        return Up::Inference(reply);
    };
    // Fast path: a generous upper bound (hash, key, shape, tags, lengths,
    // error text) that fits.
    let bound: usize = 512
        + telemetry.device.len()
        + results
            .iter()
            .map(|r| {
                160 + r
                    .output
                    .as_ref()
                    .map_or_else(String::len, |t| t.data().len())
            })
            .sum::<usize>();
    if bound <= max_reply {
        return Up::Inference(InferenceReply::Results {
            batch_id,
            results,
            telemetry,
        });
    }
    let mut sizes: Vec<usize> = results.iter().map(encoded_len).collect();
    // postcard is concatenative: header + length varint + the results.
    let empty = Up::Inference(InferenceReply::Results {
        batch_id,
        results: Vec::new(),
        telemetry: telemetry.clone(),
    });
    let base = encoded_len(&empty) + 10;
    let total = |sizes: &[usize]| base + sizes.iter().sum::<usize>();
    while total(&sizes) > max_reply {
        let Some((i, _)) = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.output.is_ok())
            .max_by_key(|(i, _)| sizes[*i])
        else {
            tracing::warn!(
                batch_id,
                "reply does not fit the reply limit even without outputs"
            );
            return Up::Inference(InferenceReply::Refused {
                batch_id,
                error: format!(
                    "inference batch {batch_id}: {} results do not fit one reply of {max_reply} bytes; send fewer requests per batch",
                    results.len()
                ),
            });
        };
        let bytes = sizes[i];
        results[i] = result(
            results[i].request_key,
            Err(format!(
                "output of {bytes} bytes does not fit the reply ({max_reply} bytes)"
            )),
        );
        sizes[i] = encoded_len(&results[i]);
    }
    Up::Inference(InferenceReply::Results {
        batch_id,
        results,
        telemetry,
    })
}
