//! `--device cpu | cuda | cuda:N` → a candle device, with a clear error where the build has no
//! CUDA support.

use candle_core::Device;

use crate::error::{Error, Result};

/// Parses a device name: `None` for the CPU, else the CUDA ordinal.
pub fn parse(name: &str) -> Result<Option<usize>> {
    let name = name.trim().to_ascii_lowercase();
    let bad = || Error::Invalid(format!("--device '{name}': expected cpu, cuda or cuda:N"));
    match name.strip_prefix("cuda") {
        _ if name == "cpu" => Ok(None),
        Some("") => Ok(Some(0)),
        Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()).map(Some).ok_or_else(bad),
        None => Err(bad()),
    }
}

/// Parses a device name and opens the device.
pub fn open(name: &str) -> Result<Device> {
    let Some(ordinal) = parse(name)? else {
        return Ok(Device::Cpu);
    };
    let name = name.trim().to_ascii_lowercase();
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Invalid(format!(
            "--device {name}: this zdcflow was built without CUDA support; rebuild with `--features cuda` \
             (scripts/build-cuda.sh) or use --device cpu"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| Error::Invalid(format!("--device {name}: cannot open the GPU: {e}")))
}

/// A short human-readable name of a device for logs and metadata.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_cuda_is_refused_without_support() {
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
        assert!(open("tpu").is_err());
        assert!(open("cuda:x").is_err());
        if !candle_core::utils::cuda_is_available() {
            let msg = open("cuda:0").unwrap_err().to_string();
            assert!(msg.contains("without CUDA support"), "{msg}");
        }
    }
}
