//! Reading a Hugging Face `tokenizer.json` for the tools, the way transformers reads it for a
//! call without `padding=` or `truncation=`: the padding and truncation the file may configure
//! (sentence-transformers' files pad every text to 128 tokens and cut it there) are turned off,
//! so a text is tokenized whole and a prompt keeps its length.

use std::path::Path;

/// The tokenizer in `path`, padding and truncation off.
pub fn load(path: &Path) -> Result<tokenizers::Tokenizer, String> {
    let mut tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| format!("{}: cannot turn truncation off: {e}", path.display()))?;
    Ok(tokenizer)
}
