//! `lmc.Tokenizer`: a Hugging Face `tokenizer.json`, read as `lmc generate` and `lmc train` read
//! it (`lmc_lab::tokenizer`: the file's own padding and truncation off, as transformers has them
//! unless asked), so that text goes in and comes out as it does there.

use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::prelude::*;

use crate::errors::LmcError;

#[pyclass(frozen, module = "lmc")]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

#[pymethods]
impl Tokenizer {
    /// Reads `path`: a `tokenizer.json`, or a checkpoint directory holding one.
    #[new]
    fn new(path: PathBuf) -> PyResult<Tokenizer> {
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path };
        let inner = lmc_lab::tokenizer::load(&file).map_err(LmcError::new_err)?;
        Ok(Tokenizer { inner, path: file })
    }

    /// The ids of `text`, with the special tokens the tokenizer adds unless told not to.
    #[pyo3(signature = (text, add_special_tokens=true))]
    fn encode(&self, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| LmcError::new_err(format!("cannot tokenize the text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Several texts at once, padded to the longest with the tokenizer's padding token (its
    /// `[PAD]`, `<pad>`, or id 0): `{"input_ids": rows, "attention_mask": rows}`, 1 for a token
    /// and 0 for padding, as transformers' `tokenizer(texts, padding=True)` gives them.
    #[pyo3(signature = (texts, add_special_tokens=true))]
    fn encode_batch(&self, texts: Vec<String>, add_special_tokens: bool) -> PyResult<HashMap<&'static str, Vec<Vec<u32>>>> {
        let mut ids = Vec::with_capacity(texts.len());
        for text in &texts {
            ids.push(self.encode(text, add_special_tokens)?);
        }
        let pad = ["[PAD]", "<pad>", "<|padding|>"]
            .iter()
            .find_map(|t| self.inner.token_to_id(t))
            .unwrap_or(0);
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
        let mask = ids
            .iter()
            .map(|row| (0..longest).map(|i| u32::from(i < row.len())).collect())
            .collect();
        for row in &mut ids {
            row.resize(longest, pad);
        }
        Ok(HashMap::from([("input_ids", ids), ("attention_mask", mask)]))
    }

    /// The text of `ids`, special tokens left out unless told otherwise.
    #[pyo3(signature = (ids, skip_special_tokens=true))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| LmcError::new_err(format!("cannot decode the ids: {e}")))
    }

    /// The id of a token (`"</s>"`), if the vocabulary has it.
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn __repr__(&self) -> String {
        format!("<lmc Tokenizer {}>", self.path.display())
    }
}
