//! A program: the model file, the files it imports with `use`, and the standard library, parsed
//! into one [`SourceMap`], with each module's scope of names resolved.
//!
//! `use std.{...}` names items of the standard library (`models/std/*.model`, embedded in the
//! compiler so it is always the one this compiler was built with); `use a.b.{...}` names items of
//! `a/b.model` next to the importing file.

use crate::suggest::did_you_mean;
use lmc_grammar::ast::{self, Item};
use lmc_grammar::{Diagnostic, FileId, SourceFile, SourceMap, Span};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The standard library's files, as compiled in.
pub const STD_FILES: &[(&str, &str)] = &[
    ("std/nn.model", include_str!("../../../models/std/nn.model")),
    ("std/losses.model", include_str!("../../../models/std/losses.model")),
];

/// The largest `.model` file accepted. Real models are a few kilobytes; the limit keeps every
/// input, however large, answered within a second.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

/// An item of some module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemRef {
    pub module: usize,
    pub item: usize,
}

/// One parsed file and the names visible in it.
#[derive(Debug)]
pub struct Module {
    pub file: FileId,
    pub ast: ast::File,
    /// The directory `use` paths are relative to; none for the standard library.
    pub dir: Option<PathBuf>,
    /// Its own items and the imported ones.
    pub scope: HashMap<String, ItemRef>,
}

/// Every module of a compilation. Module 0 is the file the user named.
#[derive(Debug)]
pub struct Program {
    pub sources: SourceMap,
    pub modules: Vec<Module>,
}

/// Why a program could not be loaded.
#[derive(Debug)]
pub struct LoadFailure {
    pub sources: SourceMap,
    pub diagnostics: Vec<Diagnostic>,
    /// Failures with no place in a source (an unreadable file named on the command line).
    pub io: Vec<String>,
}

impl Program {
    pub fn item(&self, r: ItemRef) -> &Item {
        &self.modules[r.module].ast.items[r.item]
    }

    /// Looks a name up in a module's scope.
    pub fn lookup(&self, module: usize, name: &str) -> Option<ItemRef> {
        self.modules[module].scope.get(name).copied()
    }

    /// Names visible in a module, for suggestions.
    pub fn names(&self, module: usize) -> Vec<&str> {
        self.modules[module].scope.keys().map(String::as_str).collect()
    }
}

/// Loads a program from a file on disk.
pub fn load_file(path: &Path) -> Result<Program, LoadFailure> {
    let mut loader = Loader::default();
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => {
                loader.load_root(&path.display().to_string(), text, path.parent().map(Path::to_path_buf));
            }
            Err(e) => loader.io_error(
                path,
                &format!("not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()),
            ),
        },
        Err(e) => loader.io_error(path, &e.to_string()),
    }
    loader.finish()
}

/// Loads a program from text (tests, and files given on standard input). `dir` is where its
/// `use` paths are resolved.
pub fn load_source(name: &str, text: &str, dir: Option<&Path>) -> Result<Program, LoadFailure> {
    let mut loader = Loader::default();
    loader.load_root(name, text.to_string(), dir.map(Path::to_path_buf));
    loader.finish()
}

#[derive(Default)]
struct Loader {
    sources: SourceMap,
    modules: Vec<Module>,
    diagnostics: Vec<Diagnostic>,
    /// Loaded files by path (and std files by name), to load each once.
    by_path: HashMap<PathBuf, usize>,
    std_modules: Option<Vec<usize>>,
    /// Failures not tied to a span (unreadable root file).
    io: Vec<String>,
}

impl Loader {
    fn io_error(&mut self, path: &Path, why: &str) {
        self.io.push(format!("cannot read {}: {why}", path.display()));
    }

    fn load_root(&mut self, name: &str, text: String, dir: Option<PathBuf>) {
        let index = self.parse(name, text, dir);
        if let Some(i) = index {
            self.resolve_scope(i);
        }
    }

    /// Parses a file into a new module; `None` after a syntax error.
    fn parse(&mut self, name: &str, text: String, dir: Option<PathBuf>) -> Option<usize> {
        if text.len() > MAX_SOURCE_BYTES {
            let size = text.len();
            let file = self.sources.add(SourceFile::new(name, ""));
            self.diagnostics.push(
                Diagnostic::error(
                    "E0003",
                    format!("{name} is too large for a model file ({size} bytes)"),
                    Span::new(file, 0, 0),
                    "",
                )
                .with_help(format!(
                    "model files are limited to {MAX_SOURCE_BYTES} bytes; split the model with `use`"
                )),
            );
            return None;
        }
        let file = self.sources.add(SourceFile::new(name, text));
        match lmc_grammar::parse_file(&self.sources.get(file).text, file) {
            Ok(ast) => {
                self.modules.push(Module {
                    file,
                    ast,
                    dir,
                    scope: HashMap::new(),
                });
                Some(self.modules.len() - 1)
            }
            Err(d) => {
                self.diagnostics.push(d);
                None
            }
        }
    }

    fn std(&mut self) -> Vec<usize> {
        if let Some(m) = &self.std_modules {
            return m.clone();
        }
        let mut loaded = Vec::new();
        self.std_modules = Some(Vec::new());
        for (name, text) in STD_FILES {
            if let Some(i) = self.parse(name, text.to_string(), None) {
                loaded.push(i);
            }
        }
        self.std_modules = Some(loaded.clone());
        for &i in &loaded {
            self.resolve_scope(i);
        }
        loaded
    }

    /// Fills a module's scope with its own items, then its imports (loading them).
    fn resolve_scope(&mut self, module: usize) {
        let mut scope: HashMap<String, ItemRef> = HashMap::new();
        let mut spans: HashMap<String, Span> = HashMap::new();
        let items = self.modules[module].ast.items.clone();
        for (i, item) in items.iter().enumerate() {
            let Some(name) = item.name() else { continue };
            if let Some(first) = spans.insert(name.name.clone(), name.span) {
                self.diagnostics.push(
                    Diagnostic::error(
                        "E0101",
                        format!("`{}` is defined twice", name.name),
                        name.span,
                        "defined again here",
                    )
                    .with_secondary(first, "first defined here")
                    .with_help("configs, blocks, models and variants share one namespace per file"),
                );
                continue;
            }
            scope.insert(name.name.clone(), ItemRef { module, item: i });
        }
        self.modules[module].scope = scope;
        for item in &items {
            let Item::Use(u) = item else { continue };
            let targets = self.import_targets(module, u);
            let Some(targets) = targets else { continue };
            for name in &u.names {
                let found = targets.iter().find_map(|&m| {
                    self.modules[m]
                        .ast
                        .items
                        .iter()
                        .position(|it| it.name().is_some_and(|n| n.name == name.name))
                        .map(|i| ItemRef { module: m, item: i })
                });
                match found {
                    Some(r) => {
                        if let Some(first) = spans.insert(name.name.clone(), name.span) {
                            self.diagnostics.push(
                                Diagnostic::error("E0101", format!("`{}` is defined twice", name.name), name.span, "imported here")
                                    .with_secondary(first, "also defined here"),
                            );
                            continue;
                        }
                        self.modules[module].scope.insert(name.name.clone(), r);
                    }
                    None => {
                        let candidates: Vec<String> = targets
                            .iter()
                            .flat_map(|&m| self.modules[m].ast.items.iter().filter_map(|it| it.name().map(|n| n.name.clone())))
                            .collect();
                        let module_name: Vec<&str> = u.module.iter().map(|i| i.name.as_str()).collect();
                        let d = Diagnostic::error(
                            "E0100",
                            format!("`{}` is not defined in `{}`", name.name, module_name.join(".")),
                            name.span,
                            "not found",
                        );
                        self.diagnostics
                            .push(match did_you_mean(&name.name, candidates.iter().map(String::as_str)) {
                                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                                None => d.with_help(format!("it defines: {}", candidates.join(", "))),
                            });
                    }
                }
            }
        }
    }

    /// The modules a `use` names, loading them; `None` after reporting why not.
    fn import_targets(&mut self, module: usize, u: &ast::UseDecl) -> Option<Vec<usize>> {
        let segments: Vec<&str> = u.module.iter().map(|i| i.name.as_str()).collect();
        // The grammar gives a `use` at least one module segment.
        let span = match (u.module.first(), u.module.last()) {
            (Some(first), Some(last)) => first.span.to(last.span),
            _ => u.span,
        };
        if segments == ["std"] {
            return Some(self.std());
        }
        let Some(dir) = self.modules[module].dir.clone() else {
            self.diagnostics.push(Diagnostic::error(
                "E0107",
                format!("`{}` cannot be imported from here", segments.join(".")),
                span,
                "not a standard-library module",
            ));
            return None;
        };
        let mut path = dir.clone();
        for s in &segments {
            path.push(s);
        }
        path.set_extension("model");
        let key = path.canonicalize().unwrap_or(path.clone());
        if let Some(&m) = self.by_path.get(&key) {
            return Some(vec![m]);
        }
        let text = match std::fs::read(&path).map(String::from_utf8) {
            Ok(Ok(t)) => t,
            Ok(Err(_)) => {
                self.diagnostics.push(Diagnostic::error(
                    "E0107",
                    format!("{} is not valid UTF-8", path.display()),
                    span,
                    "imported here",
                ));
                return None;
            }
            Err(e) => {
                self.diagnostics.push(
                    Diagnostic::error(
                        "E0107",
                        format!("no module `{}`", segments.join(".")),
                        span,
                        format!("cannot read {}: {e}", path.display()),
                    )
                    .with_help("`use a.b.{Name}` reads a/b.model next to this file; the standard library is `std`"),
                );
                return None;
            }
        };
        let m = self.parse(&path.display().to_string(), text, path.parent().map(Path::to_path_buf))?;
        self.by_path.insert(key, m);
        self.resolve_scope(m);
        Some(vec![m])
    }

    fn finish(self) -> Result<Program, LoadFailure> {
        if !self.io.is_empty() || !self.diagnostics.is_empty() || self.modules.is_empty() {
            return Err(LoadFailure {
                sources: self.sources,
                diagnostics: self.diagnostics,
                io: self.io,
            });
        }
        Ok(Program {
            sources: self.sources,
            modules: self.modules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_files_are_refused() {
        let text = format!("# {}\n", "x".repeat(MAX_SOURCE_BYTES));
        let f = load_source("big.model", &text, None).unwrap_err();
        assert_eq!(f.diagnostics[0].code, "E0003");
    }

    #[test]
    fn std_imports_resolve_and_unknown_names_are_reported() {
        let ok = load_source("t.model", "use std.{Linear, LayerNorm}", None).unwrap();
        assert!(ok.lookup(0, "Linear").is_some() && ok.lookup(0, "LayerNorm").is_some());
        let bad = load_source("t.model", "use std.{Linaer}", None).unwrap_err();
        assert_eq!(bad.diagnostics[0].code, "E0100");
        assert!(bad.diagnostics[0].help.as_deref().unwrap_or("").contains("Linear"));
    }

    #[test]
    fn the_standard_library_parses() {
        for (name, text) in STD_FILES {
            lmc_grammar::parse_file(text, 0).unwrap_or_else(|d| panic!("{name}: {d:?}"));
        }
    }
}
