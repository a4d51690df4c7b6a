//! Device names as users write them: "auto", "cpu", "cuda", "cuda:N".

use tch::{Cuda, Device};

use crate::error::{Error, Result};

/// Parses a device name. "auto" picks the first GPU when CUDA is available, else the CPU; asking
/// for a GPU that is not there is an error rather than a silent fallback.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    let cuda_count = || {
        if Cuda::is_available() {
            Cuda::device_count()
        } else {
            0
        }
    };
    let cuda = |index: usize| {
        let n = cuda_count() as usize;
        if index < n {
            Ok(Device::Cuda(index))
        } else if n == 0 {
            Err(Error::Device(format!(
                "device {name:?} asked for, but CUDA is not available on this machine \
                 (no GPU, or torch without CUDA); use device=\"cpu\" or \"auto\""
            )))
        } else {
            Err(Error::Device(format!(
                "device {name:?} asked for, but only {n} CUDA device(s) exist (cuda:0..cuda:{})",
                n - 1
            )))
        }
    };
    match name.as_str() {
        "auto" => Ok(if cuda_count() > 0 {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => cuda(index),
            _ => Err(Error::invalid(format!(
                "unknown device {name:?}: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""
            ))),
        },
    }
}

/// The name users see for a device, the inverse of [`parse_device`].
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !Cuda::is_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(matches!(parse_device("cuda"), Err(Error::Device(_))));
            assert!(matches!(parse_device("cuda:1"), Err(Error::Device(_))));
        }
    }
}
