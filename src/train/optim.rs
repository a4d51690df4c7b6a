//! Adam and AdamW over one flat buffer, and the learning-rate schedule.
//!
//! All trainable parameters are re-pointed into one contiguous fp32 tensor, and after the first
//! backward their gradients into another, so that a step is a handful of whole-buffer kernels
//! instead of several per parameter (hundreds of tiny launches on a GPU). The moments are plain
//! tensors we own, which makes the optimizer state easy to save and restore exactly. The
//! arithmetic is PyTorch's `torch.optim.Adam` / `AdamW` (non-amsgrad).

use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum OptimizerKind {
    /// L2 penalty added to the gradient (`torch.optim.Adam(weight_decay=...)`).
    Adam,
    /// Decoupled weight decay (`torch.optim.AdamW`).
    AdamW,
}

crate::serde_by_name!(OptimizerKind);

impl OptimizerKind {
    pub const NAMES: [&'static str; 2] = ["adam", "adamw"];

    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            other => Err(Error::invalid(format!(
                "unknown optimizer {other:?}: expected \"adam\" or \"adamw\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    pub kind: OptimizerKind,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            kind: OptimizerKind::Adam,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct FlatAdam {
    config: AdamConfig,
    /// Trainable variables (shallow handles), sorted by name.
    params: Vec<(String, Tensor)>,
    flat: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// 1 where weight decay applies: matrices and embeddings of parameters that receive
    /// gradients (not biases, norms, layer scales or the temperature).
    decay_mask: Tensor,
    grads_bound: bool,
    step: i64,
}

fn views(flat: &Tensor, params: &[(String, Tensor)]) -> Vec<Tensor> {
    let mut offset = 0;
    params
        .iter()
        .map(|(_, p)| {
            let n = p.numel() as i64;
            let v = flat.narrow(0, offset, n).view(p.size().as_slice());
            offset += n;
            v
        })
        .collect()
}

impl FlatAdam {
    /// Takes over the trainable variables of `vs`: their data now lives in one flat buffer.
    pub fn new(vs: &nn::VarStore, config: AdamConfig) -> Result<Self> {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        params.retain(|(_, t)| t.requires_grad());
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let flat = tch::no_grad(|| {
            Tensor::f_cat(
                &params
                    .iter()
                    .map(|(_, p)| p.detach().to_kind(Kind::Float).reshape([-1]))
                    .collect::<Vec<_>>(),
                0,
            )
        })?;
        let param_views = views(&flat, &params);
        for ((_, p), view) in params.iter_mut().zip(param_views) {
            p.f_set_data(&view)?;
        }
        let decay_mask = flat.zeros_like();
        Ok(FlatAdam {
            config,
            grad: flat.zeros_like(),
            exp_avg: flat.zeros_like(),
            exp_avg_sq: flat.zeros_like(),
            decay_mask,
            params,
            flat,
            grads_bound: false,
            step: 0,
        })
    }

    #[cfg(test)]
    pub fn step_count(&self) -> i64 {
        self.step
    }

    pub fn zero_grad(&mut self) {
        if self.grads_bound {
            let _ = self.grad.zero_();
        } else {
            for (_, p) in self.params.iter_mut() {
                p.zero_grad();
            }
        }
    }

    /// After the first backward: move every gradient into the flat gradient buffer (autograd
    /// then accumulates into those views in place), and record which parameters learn.
    fn bind_grads(&mut self) -> Result<()> {
        let grad_views = views(&self.grad, &self.params);
        let mask_views = views(&self.decay_mask, &self.params);
        for (((_, p), mut gv), mut mv) in self.params.iter().zip(grad_views).zip(mask_views) {
            let mut g = p.grad();
            if g.defined() {
                tch::no_grad(|| gv.f_copy_(&g.to_kind(Kind::Float)))?;
                g.f_set_data(&gv)?;
                if p.dim() >= 2 {
                    let _ = mv.fill_(1.0);
                }
            }
        }
        self.grads_bound = true;
        Ok(())
    }

    /// The flat buffer holding every parameter's gradient (bound on first use), for summing
    /// over data-parallel ranks in one collective call. Call after a backward pass.
    pub fn gradients(&mut self) -> Result<Tensor> {
        if !self.grads_bound {
            self.bind_grads()?;
        }
        Ok(self.grad.shallow_clone())
    }

    /// Divides the gradients by a loss scale (fp16 training) and tells whether they are all
    /// finite; a step with non-finite gradients must be skipped.
    pub fn unscale_grads(&mut self, scale: f64) -> Result<bool> {
        if !self.grads_bound {
            self.bind_grads()?;
        }
        tch::no_grad(|| -> Result<bool> {
            let _ = self.grad.f_div_scalar_(scale)?;
            Ok(bool::try_from(&self.grad.f_isfinite()?.f_all()?)?)
        })
    }

    /// One Adam(W) update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        if !self.grads_bound {
            self.bind_grads()?;
        }
        let AdamConfig {
            kind,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        self.step += 1;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        tch::no_grad(|| -> Result<()> {
            let mut grad = self.grad.shallow_clone();
            if weight_decay != 0.0 {
                let decay = &self.flat * &self.decay_mask;
                match kind {
                    OptimizerKind::Adam => grad = grad.f_add(&(decay * weight_decay))?,
                    OptimizerKind::AdamW => {
                        let _ = self.flat.f_sub_(&(decay * (lr * weight_decay)))?;
                    }
                }
            }
            let _ = self.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
            let _ = self.exp_avg_sq.f_mul_scalar_(beta2)?;
            let _ = self
                .exp_avg_sq
                .f_addcmul_(&grad, &(&grad * (1.0 - beta2)))?;
            let denom = (self.exp_avg_sq.f_sqrt()? / bc2.sqrt()).f_add_scalar(eps)?;
            let _ = self
                .flat
                .f_sub_(&(self.exp_avg.f_div(&denom)? * (lr / bc1)))?;
            Ok(())
        })
    }

    /// The state to save: moments (flat, in parameter-name order) and the step count.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("exp_avg".into(), self.exp_avg.shallow_clone()),
            ("exp_avg_sq".into(), self.exp_avg_sq.shallow_clone()),
            ("step".into(), Tensor::from_slice(&[self.step])),
        ]
    }

    /// Restores a state from [`FlatAdam::state`] of the same model.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let get = |name: &str| {
            state
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::invalid(format!("optimizer state lacks {name}")))
        };
        let (m, v) = (get("exp_avg")?, get("exp_avg_sq")?);
        if m.size() != self.exp_avg.size() || v.size() != self.exp_avg_sq.size() {
            return Err(Error::invalid(
                "optimizer state does not match the model (another config?)",
            ));
        }
        tch::no_grad(|| -> Result<()> {
            self.exp_avg.f_copy_(m)?;
            self.exp_avg_sq.f_copy_(v)?;
            Ok(())
        })?;
        self.step = get("step")?.f_int64_value(&[0])?;
        Ok(())
    }
}

/// Learning rate at a step: linear warm-up, then constant or cosine decay to zero.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Schedule {
    Constant,
    Cosine,
}

crate::serde_by_name!(Schedule);

impl Schedule {
    pub const NAMES: [&'static str; 2] = ["constant", "cosine"];

    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Cosine => "cosine",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(Error::invalid(format!(
                "unknown schedule {other:?}: expected \"constant\" or \"cosine\""
            ))),
        }
    }

    /// `step` counts from 0; `total` is the planned number of steps.
    pub fn lr(self, base: f64, step: i64, warmup: i64, total: i64) -> f64 {
        if warmup > 0 && step < warmup {
            return base * (step + 1) as f64 / warmup as f64;
        }
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let span = (total - warmup).max(1) as f64;
                let t = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
                0.5 * base * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adam by the textbook, per element, in f64.
    fn adam_reference(p0: f64, grads: &[f64], lr: f64, wd: f64, decoupled: bool) -> f64 {
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (t, &g0) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            let mut g = g0;
            if decoupled {
                p -= lr * wd * p;
            } else {
                g += wd * p;
            }
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mh = m / (1.0 - b1.powi(t));
            let vh = v / (1.0 - b2.powi(t));
            p -= lr * mh / (vh.sqrt() + eps);
        }
        p
    }

    fn run(kind: OptimizerKind, wd: f64) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().var("w", &[2, 2], nn::Init::Const(0.5));
        let b = vs.root().var("b", &[2], nn::Init::Const(-0.3));
        let mut opt = FlatAdam::new(
            &vs,
            AdamConfig {
                kind,
                weight_decay: wd,
                ..Default::default()
            },
        )
        .unwrap();
        // loss = sum(c * w) + sum(c * b): constant gradient c per step.
        let coefs = [1.0, -2.0, 0.5];
        for c in coefs {
            opt.zero_grad();
            ((&w * c).sum(Kind::Float) + (&b * c).sum(Kind::Float)).backward();
            opt.step(0.1).unwrap();
        }
        let decoupled = kind == OptimizerKind::AdamW;
        let want_w = adam_reference(0.5, &coefs, 0.1, wd, decoupled);
        // Biases are not decayed.
        let want_b = adam_reference(-0.3, &coefs, 0.1, 0.0, decoupled);
        assert!((w.double_value(&[0, 1]) - want_w).abs() < 1e-5);
        assert!((b.double_value(&[1]) - want_b).abs() < 1e-5);
        assert_eq!(opt.step_count(), 3);
    }

    #[test]
    fn adam_and_adamw_match_the_textbook() {
        run(OptimizerKind::Adam, 0.0);
        run(OptimizerKind::Adam, 0.1);
        run(OptimizerKind::AdamW, 0.1);
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.lr(1.0, 0, 0, 100), 1.0);
        assert!((Schedule::Constant.lr(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((Schedule::Cosine.lr(1.0, 10, 10, 110) - 1.0).abs() < 1e-12);
        assert!((Schedule::Cosine.lr(1.0, 60, 10, 110) - 0.5).abs() < 1e-12);
        assert!(Schedule::Cosine.lr(1.0, 110, 10, 110).abs() < 1e-12);
    }
}
