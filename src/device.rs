//! Device names as users write them: "auto", "cpu", "cuda", "cuda:N".

use serde::{Deserialize, Serialize};
use tch::{Cuda, Device, Tensor};

use crate::error::{Error, Result};

/// A device as a user names it, before looking at the machine: "auto", "cpu", "cuda" or
/// "cuda:N". [`DeviceSpec::resolve`] turns it into a device that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The first GPU when CUDA is available, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(name: &str) -> Result<Self> {
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(index)) => Ok(DeviceSpec::Cuda(index)),
                _ => Err(Error::invalid(format!(
                    "unknown device {name:?}: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""
                ))),
            },
        }
    }

    /// The device on this machine; asking for a GPU that is not there is an error rather than
    /// a silent fallback.
    pub fn resolve(self) -> Result<Device> {
        let n = if Cuda::is_available() {
            Cuda::device_count() as usize
        } else {
            0
        };
        match self {
            DeviceSpec::Auto if n > 0 => Ok(Device::Cuda(0)),
            DeviceSpec::Auto | DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(index) if index < n => Ok(Device::Cuda(index)),
            DeviceSpec::Cuda(_) if n == 0 => Err(Error::Device(format!(
                "device {:?} asked for, but CUDA is not available on this machine \
                 (no GPU, or torch without CUDA); use device=\"cpu\" or \"auto\"",
                self.name()
            ))),
            DeviceSpec::Cuda(_) => Err(Error::Device(format!(
                "device {:?} asked for, but only {n} CUDA device(s) exist (cuda:0..cuda:{})",
                self.name(),
                n - 1
            ))),
        }
    }

    pub fn name(self) -> String {
        match self {
            DeviceSpec::Auto => "auto".into(),
            DeviceSpec::Cpu => "cpu".into(),
            DeviceSpec::Cuda(i) => format!("cuda:{i}"),
        }
    }
}

crate::serde_by_name!(DeviceSpec);

/// The name users see for a device (what [`DeviceSpec::parse`] reads).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

/// Moves a CPU tensor to `device` without making the host wait: on CUDA through page-locked
/// memory and a non-blocking copy (pass `pinned` when the tensor already is page-locked, as
/// the data loader's batches are). A copy from ordinary memory would block the host until the
/// GPU has finished all queued work, so the host could never run ahead of the GPU and every
/// kernel launch would show in the step time.
pub fn to_device_async(t: &Tensor, device: Device, pinned: bool) -> Result<Tensor> {
    if !device.is_cuda() {
        return Ok(t.f_to_device(device)?);
    }
    let staged = if pinned {
        t.shallow_clone()
    } else {
        pin(t, device)?
    };
    Ok(staged.f_to_device_(device, staged.kind(), true, false)?)
}

/// A page-locked copy of a CPU tensor, for asynchronous copies to `device`. (`_pin_memory`:
/// `pin_memory(device)` warns on every call that its argument is deprecated.)
pub fn pin(t: &Tensor, device: Device) -> Result<Tensor> {
    Ok(t.f_internal_pin_memory(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_device(name: &str) -> Result<Device> {
        DeviceSpec::parse(name)?.resolve()
    }

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
