//! A bound model's parameters read and written between runs: what training does between steps.
//! Each takes the values in the checkpoint's layout (row-major over the manifest shape) and
//! keeps every bound copy of a parameter (its plain values, a packed copy for a weight format,
//! the GPU's) the same.

use std::borrow::Cow;

use lmc_abi::{DType, Dim, WeightFormat};

use super::{f32_elements, packed_param, LoadedModel, ParamData};
use crate::cuda::DeviceBuffer;
use crate::error::RuntimeError;
use crate::tensor::HostTensor;

impl LoadedModel {
    /// The manifest parameters that tensor `name` feeds: itself, and its packed copy for a
    /// weight format.
    fn feeds(&self, name: &str) -> Result<Vec<usize>, RuntimeError> {
        let m = self.module.manifest();
        let feeds: Vec<usize> = (0..m.params.len()).filter(|&i| m.params[i].name == name).collect();
        if feeds.is_empty() {
            return Err(RuntimeError::invalid_argument(format!("{} has no parameter \"{name}\"", m.model)));
        }
        Ok(feeds)
    }

    /// F32 parameter `name`'s values in the checkpoint's layout: borrowed where the model stores
    /// them plain, unpacked from f32 panels, and an error where it keeps only a lossy format
    /// (bf16, int8).
    pub fn parameter_f32(&self, name: &str) -> Result<Cow<'_, [f32]>, RuntimeError> {
        let m = self.module.manifest();
        let feeds = self.feeds(name)?;
        let spec = &m.params[feeds[0]];
        if spec.dtype != DType::F32 {
            return Err(RuntimeError::invalid_argument(format!(
                "parameter \"{name}\" is {}, not f32",
                spec.dtype.as_str()
            )));
        }
        if let Some(&i) = feeds.iter().find(|&&i| m.params[i].packing.is_none()) {
            return Ok(match &self.params[i].1 {
                ParamData::Copied(t) => Cow::Borrowed(
                    t.as_f32()
                        .ok_or_else(|| RuntimeError::internal("an f32 parameter is stored as another type"))?,
                ),
                _ => Cow::Owned(f32_elements(self.param_bytes(i)?).collect()),
            });
        }
        let shape = static_shape(&spec.shape);
        for &i in &feeds {
            let packed = m.params[i].packing.and_then(|p| Some((p, p.matrix(&shape)?)));
            if let (Some((packing, (n, k))), ParamData::Copied(t)) = (packed, &self.params[i].1) {
                if packing.format == WeightFormat::F32 {
                    let stored = t
                        .as_f32()
                        .ok_or_else(|| RuntimeError::internal("an f32 parameter is stored as another type"))?;
                    return Ok(Cow::Owned(packing.unpack(stored, n, k)));
                }
            }
        }
        Err(RuntimeError::invalid_argument(format!(
            "parameter \"{name}\" is bound only in {}; its f32 values are not kept (bind it as f32 to read or train it)",
            m.weight_storage().unwrap_or_else(|| "a packed format".to_string())
        )))
    }

    /// Applies `update` to f32 parameter `name`'s values (the checkpoint's layout) in place
    /// where the model stores them plain (a mapped tensor is copied first), else to an unpacked
    /// copy that is packed back; then brings the parameter's other copies (packed, on the GPU)
    /// up to date. Training's optimizer step: the model's copy is the only one.
    pub fn update_parameter<T>(&mut self, name: &str, update: impl FnOnce(&mut [f32]) -> T) -> Result<T, RuntimeError> {
        let m = self.module.manifest();
        let device = m.device;
        let feeds = self.feeds(name)?;
        let Some(&plain) = feeds
            .iter()
            .find(|&&i| m.params[i].packing.is_none() && m.params[i].dtype == DType::F32)
        else {
            let mut values = self.parameter_f32(name)?.into_owned();
            let out = update(&mut values);
            self.set_parameter(name, &values)?;
            return Ok(out);
        };
        if let ParamData::Mapped { file } = self.params[plain].1 {
            let copy = HostTensor::from_bytes(name, DType::F32, self.params[plain].0.clone(), self.param_bytes(plain)?)?;
            self.params[plain].1 = ParamData::Copied(copy);
            self.files[file].release_mapped(name);
        }
        let ParamData::Copied(t) = &mut self.params[plain].1 else {
            return Err(RuntimeError::internal("a plain f32 parameter is stored packed"));
        };
        let values = t
            .as_f32_mut()
            .ok_or_else(|| RuntimeError::internal("an f32 parameter is stored as another type"))?;
        let out = update(values);
        let others: Vec<usize> = feeds.into_iter().filter(|&i| i != plain).collect();
        let updated = (!others.is_empty()).then(|| values.to_vec());
        if device == lmc_abi::Device::Cuda {
            self.device_params[plain] = DeviceBuffer::upload(self.param_bytes(plain)?, &format!("parameter \"{name}\""))?;
        }
        if let Some(values) = updated {
            for i in others {
                self.set_parameter_at(i, &values)?;
            }
        }
        Ok(out)
    }

    /// Replaces f32 parameter `name`'s values with `values`, given in the checkpoint's layout
    /// (row-major over the manifest shape): packed again where the module reads it packed, copied
    /// to the GPU for a CUDA module. What training uses between steps; takes `&mut self`, so no
    /// run can be reading the old values.
    pub fn set_parameter(&mut self, name: &str, values: &[f32]) -> Result<(), RuntimeError> {
        for i in self.feeds(name)? {
            self.set_parameter_at(i, values)?;
        }
        Ok(())
    }

    fn set_parameter_at(&mut self, i: usize, values: &[f32]) -> Result<(), RuntimeError> {
        let m = self.module.manifest();
        let spec = &m.params[i];
        let name = spec.name.as_str();
        if spec.dtype != DType::F32 {
            return Err(RuntimeError::invalid_argument(format!(
                "parameter \"{name}\" is {}, not f32",
                spec.dtype.as_str()
            )));
        }
        let shape = static_shape(&spec.shape);
        if values.len() != shape.iter().product::<usize>() {
            return Err(RuntimeError::invalid_argument(format!(
                "parameter \"{name}\" has {} elements ({shape:?}); {} given",
                shape.iter().product::<usize>(),
                values.len()
            )));
        }
        let packed = spec.packing.and_then(|p| p.matrix(&shape).map(|(n, k)| (p, n, k)));
        let stored_shape = packed.map_or(shape.clone(), |(p, n, k)| p.packed_shape(n, k).to_vec());
        if let Some((packing, n, k)) = packed.filter(|(p, ..)| p.format != WeightFormat::F32) {
            self.params[i] = (stored_shape, packed_param(name, &packing.pack_bytes(values, n, k))?);
            return Ok(());
        }
        // Written over the values bound before when they are a copy of the same shape (every
        // step of training), else into a new copy.
        if let (ParamData::Copied(t), lmc_abi::Device::Cpu) = (&mut self.params[i].1, m.device) {
            if t.shape == stored_shape {
                let out = t
                    .as_f32_mut()
                    .ok_or_else(|| RuntimeError::internal("an f32 parameter is stored as another type"))?;
                match packed {
                    Some((packing, n, k)) => packing.pack_into(values, n, k, out),
                    None => out.copy_from_slice(values),
                }
                return Ok(());
            }
        }
        let tensor = match packed {
            Some((packing, n, k)) => HostTensor::from_f32(name, stored_shape, packing.pack(values, n, k))?,
            None => HostTensor::from_f32(name, shape, values.to_vec())?,
        };
        if m.device == lmc_abi::Device::Cuda {
            self.device_params[i] = DeviceBuffer::upload(tensor.bytes(), &format!("parameter \"{name}\""))?;
        }
        self.params[i] = (tensor.shape.clone(), ParamData::Copied(tensor));
        Ok(())
    }
}

/// A parameter's shape (static: checked when the module was loaded).
fn static_shape(shape: &[Dim]) -> Vec<usize> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Static(n) => usize::try_from(*n).unwrap_or(0),
            Dim::Symbol(_) => 0,
        })
        .collect()
}
