"""Types of the native half of the package (``lmc._lmc``); ``lmc/__init__.py`` is the API."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

__version__: str

class LmcError(Exception): ...

class CompileError(LmcError):
    diagnostics: List["Diagnostic"]

class InputError(LmcError): ...
class WeightsError(LmcError): ...
class LmcWarning(UserWarning): ...

class Diagnostic:
    code: str
    severity: str
    message: str
    file: str
    line: int
    column: int
    end_line: int
    end_column: int
    label: str
    help: Optional[str]
    rendered: str

class Tensor:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...

class Model:
    manifest_json: str
    config_json: Optional[str]
    source: str
    weights_dtype: Optional[str]
    unused_tensors: List[str]
    threads: Optional[int]
    def run(self, inputs: Dict[str, Any]) -> List[Tuple[str, Tensor]]: ...
    def generate(
        self,
        prompts: List[List[int]],
        max_new_tokens: int,
        *,
        eos_token_id: List[int] = ...,
        pad_token_id: Optional[int] = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        context: Optional[Dict[str, Any]] = None,
    ) -> List[List[int]]: ...

class Decoder:
    position: int
    capacity: int
    batch: int
    def __init__(self, model: Model, batch: int = 1, context: Optional[Dict[str, Any]] = None) -> None: ...
    def step(self, tokens: List[int], n: int) -> Tensor: ...

class Tokenizer:
    vocab_size: int
    def __init__(self, path: Any) -> None: ...
    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]: ...
    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> Dict[str, List[List[int]]]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...
    def token_to_id(self, token: str) -> Optional[int]: ...

def compile(
    spec: str,
    weights: Optional[str] = None,
    *,
    random_weights: bool = False,
    seed: Optional[int] = None,
    config: Optional[str] = None,
    set: List[str] = ...,
    strict: bool = False,
    given: List[str] = ...,
    decode: Optional[int] = None,
    threads: Optional[int] = None,
    device: str = "cpu",
) -> Model: ...
def load(
    library: str,
    weights: Optional[str] = None,
    *,
    random_weights: bool = False,
    seed: Optional[int] = None,
    threads: Optional[int] = None,
) -> Model: ...
def main(argv: List[str]) -> int: ...
def run_command(args: List[str]) -> None: ...
def check(paths: List[str], config: Optional[str] = None) -> List[Diagnostic]: ...
