"""Whether a ``.pt2`` file (``torch.export.save``) can run code while it loads: the check made before a stranger's
``.pt2`` reaches ``torch.export.load`` (:func:`senet_viz.models.loaders.load_model_arg` with ``untrusted=True``).

:func:`pt2_code_risks` reads the archive with torch's own reader and returns what in it could run code (an empty
list: none); the comments below list where torch 2.14 runs code from a ``.pt2``.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re

import torch


class NotAPt2Error(ValueError):
    """The bytes are no PT2 archive (``torch.export.save``); the message says what the reader found."""

# torch.export.load (torch 2.14) runs code from a .pt2 in these places, found by reading torch/export/pt2_archive
# /_package.py, torch/_export/serde/serialize.py and torch/export/_unlift.py:
# - weights / tensor constants marked ``use_pickle``: torch.load(weights_only=False); ``custom_obj_*`` constants:
#   torch._C._pickle_load_obj (TorchBind); ``opaque_obj_*`` constants: pickle.loads; legacy ``data/weights/<m>.pt``
#   and ``data/constants/<m>.pt`` files, and the sample inputs: torch.load(weights_only=True), falling back to
#   weights_only=False when that fails; ``data/aotinductor/``: a compiled shared library; when load_pt2 fails with
#   a RuntimeError, torch.export.load retries the file as a legacy zip (pickles with the same fallback);
# - shape expressions (``expr_str``): sympy.sympify, which evals the string (a payload there ran at load);
# - ``guards_code`` and string-valued graph inputs: pasted into Python source that program.module() execs and
#   its forward runs (a payload in guards_code ran);
# - node targets: resolved by name under torch / operator / math; the export verifier admits only operator
#   overloads and a few builtins, but ATen itself has aten.from_file and aten.save, which read and write files;
# - names (parameters, forward arguments, attributes): pasted into the module's generated forward source.
# A stranger's .pt2 loads only when none of these can carry code: read with torch's own archive reader (so that
# both read the same members), checked here, then handed to load_pt2 as those same bytes (no legacy retry).

_SAFE_BUILTINS = {operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
                  operator.mod, operator.pow, operator.neg, operator.pos, operator.eq, operator.ne, operator.lt,
                  operator.le, operator.gt, operator.ge, operator.and_, operator.or_, operator.not_}
_DENIED_ATEN = {"from_file", "save", "_print", "warn"}  # file access and output; any `str filename` too
_NAME = re.compile(r"^[\w.\-:]*$")  # names, FQNs, devices, dtypes as written by torch.export.save
_FREE_TEXT = {"stack_trace", "nn_module_stack", "torch_fn", "source_fn_stack", "custom", "from_node", "in_spec",
              "out_spec", "torch_version", "as_string", "as_strings", "verifiers"}  # stored or parsed as JSON
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # a \r would end a line of generated source
_SYMPY_NAMES = {"Symbol", "True", "False", "positive", "negative", "nonnegative", "nonpositive", "integer", "real",
                "finite", "zero", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Max", "Min", "Abs", "Mod",
                "floor", "ceiling", "oo", "Piecewise", "FloorDiv", "ModularIndexing", "Where", "PythonMod",
                "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow",
                "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
                "RoundToInt", "RoundDecimal", "ToFloat", "Identity"}
_SYMPY_TOKEN = re.compile(r"\s+|(?P<num>\d+(\.\d*)?([eE][-+]?\d+)?)|(?P<str>'[A-Za-z_]\w*')|(?P<name>[A-Za-z_]\w*)"
                          r"|(?P<op>\*\*|[-+*/%(),=<>!&|~])")
_SYMBOL = re.compile(r"^[a-z]+\d+$")  # s0, u3, zuf0: the names export gives sizes


def _sympy_risk(expr: str) -> str | None:
    """Why sympify(expr) could run code (None: it can only build a sympy expression). Allowed: numbers,
    arithmetic, the sympy names export writes, size symbols, and a quoted name right after ``Symbol(``."""
    tokens: list[str] = []
    pos = 0
    while pos < len(expr):
        match = _SYMPY_TOKEN.match(expr, pos)
        if match is None:
            return f"a shape expression with {expr[pos:pos + 20]!r}"
        pos = match.end()
        if match["name"] and match["name"] not in _SYMPY_NAMES and not _SYMBOL.match(match["name"]):
            return f"a shape expression naming {match['name']!r}"
        if match["str"] and tokens[-2:] != ["Symbol", "("]:
            return "a shape expression with a string outside Symbol('...')"
        if not match[0].isspace():
            tokens.append(match[0])
    return None


def _target_risk(target: str) -> str | None:
    """Why a graph node's target is not plainly an ATen operator or a safe builtin (None: it is)."""

    if target.startswith("torch.ops.aten.") and target.count(".") == 4:
        _, _, _, op, overload = target.split(".")
        if op in _DENIED_ATEN:
            return f"the operator aten.{op}, which reads or writes files"
        packet = getattr(torch.ops.aten, op, None) if op.isidentifier() else None
        overload_op = getattr(packet, overload, None) if packet is not None and overload.isidentifier() else None
        if isinstance(overload_op, torch._ops.OpOverload):
            if any(a.name in ("filename", "path", "file") for a in overload_op._schema.arguments):
                return f"the operator aten.{op}, which takes a file name"
            return None
        return f"an unknown operator {target!r}"
    module, _, name = target.partition(".")
    table = {"_operator": operator, "math": math, "torch": torch}.get(module)
    if table is not None and name.isidentifier():
        fn = getattr(table, name, None)
        if fn in _SAFE_BUILTINS or fn in (math.trunc, math.floor, math.ceil) or (
                module == "torch" and name.startswith("sym_")):
            return None
    return f"the call target {target[:80]!r} (only ATen operators and arithmetic are loaded from strangers)"


def _graph_risks(program: dict) -> list[str]:
    """Why a serialized ExportedProgram (models/<name>.json) could run code when deserialized or run."""
    risks: list[str] = []
    if program.get("guards_code"):
        risks.append("guard code (Python that program.module() compiles into its forward)")

    def walk(obj: object, key: str | None, in_node_inputs: bool) -> None:
        if isinstance(obj, dict):
            if "target" in obj and "inputs" in obj and "outputs" in obj and isinstance(obj["target"], str):
                if (why := _target_risk(obj["target"])) is not None:
                    risks.append(why)
                for k, v in obj.items():
                    if k != "target":
                        walk(v, k, k == "inputs")
                return
            for k, v in obj.items():
                if not isinstance(k, str) or not _NAME.match(k):
                    risks.append(f"a field named {str(k)[:40]!r}")
                elif k in ("as_operator", "as_operators"):
                    risks.append("an operator passed as an argument (higher-order operators)")
                elif k in ("as_graph", "as_graphs"):
                    risks.append("a subgraph (higher-order operators)")
                elif k in ("as_custom_obj", "as_custom_objs"):
                    risks.append("a custom (TorchBind) object")
                elif k in ("as_string", "as_strings") and not in_node_inputs:
                    risks.append("a string input (pasted into generated guard code)")
                elif k == "custom_obj":
                    risks.append("a custom (TorchBind) object")
                walk(v, k, in_node_inputs)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, key, in_node_inputs)
        elif isinstance(obj, str):
            if key == "expr_str":
                if (why := _sympy_risk(obj)) is not None:
                    risks.append(why)
            elif key in _FREE_TEXT or key == "guards_code":
                if _CONTROL.search(obj):
                    risks.append(f"a control character in {key}")
            elif not _NAME.match(obj):
                risks.append(f"the {key} {obj[:40]!r}, not a plain name")

    walk(program, None, False)
    return risks


def _payload_risks(config: dict, kind: str, prefix: str, records: set[str], folder: str) -> list[str]:
    risks = []
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        return [f"an unreadable {kind} list"]
    for fqn, meta in entries.items():
        if not _NAME.match(str(fqn)) or not isinstance(meta, dict):
            risks.append(f"the {kind} {str(fqn)[:40]!r}, not a plain name")
        elif meta.get("use_pickle") is not False:
            risks.append(f"the {kind} {fqn} stored as a pickle (use_pickle), which torch.export.load unpickles "
                         "with weights_only=False")
        elif not str(meta.get("path_name", "")).startswith(prefix) or folder + meta["path_name"] not in records:
            risks.append(f"the {kind} {fqn} stored as {str(meta.get('path_name'))[:40]!r}, not a raw tensor")
    return risks


def pt2_code_risks(data: bytes) -> list[str]:
    """What in the ``.pt2`` archive ``data`` could run code when ``torch.export.load`` reads it or its module
    runs (see the comment above); empty for a plain program (raw tensors, ATen operators, no pickle but sample
    inputs that load with ``weights_only=True``). Raises :class:`NotAPt2Error` for bytes that are no PT2
    archive."""
    from torch.export.pt2_archive import constants as c
    from torch.export.pt2_archive._package import PT2ArchiveReader

    try:
        reader = PT2ArchiveReader(io.BytesIO(data))
        records = set(reader.get_file_names())
    except Exception as error:
        raise NotAPt2Error(f"not a torch.export program (.pt2 archive): {type(error).__name__}: "
                             f"{str(error)[:200]}") from error
    models = sorted(n[len(c.MODELS_DIR):-len(".json")] for n in records
                    if n.startswith(c.MODELS_DIR) and n.endswith(".json"))
    if not models:
        return ["no exported program (models/*.json)"]
    expected = {c.ARCHIVE_FORMAT_PATH, c.ARCHIVE_VERSION_PATH, "byteorder", ".data/version",
                ".data/serialization_id"}
    risks: list[str] = []
    for model in models:
        if not _NAME.match(model):
            risks.append(f"a program named {model[:40]!r}")
            continue
        weights_config = c.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model)
        constants_config = c.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model)
        sample_inputs = c.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
        expected |= {c.MODELS_FILENAME_FORMAT.format(model), weights_config, constants_config, sample_inputs}
        for config, kind, prefix, folder in ((weights_config, "weight", c.WEIGHT_FILENAME_PREFIX, c.WEIGHTS_DIR),
                                             (constants_config, "constant", c.TENSOR_CONSTANT_FILENAME_PREFIX,
                                              c.CONSTANTS_DIR)):
            if config not in records:
                risks.append(f"no {config} (a legacy pickled layout)")
                continue
            try:
                parsed = json.loads(reader.read_string(config))
            except (ValueError, UnicodeDecodeError, RecursionError):
                parsed = None
            risks += _payload_risks(parsed, kind, prefix, records, folder)
            if isinstance(parsed, dict) and isinstance(parsed.get("config"), dict):
                expected |= {folder + str(m.get("path_name")) for m in parsed["config"].values()
                             if isinstance(m, dict)}
        if sample_inputs in records:
            try:  # what torch tries first; were it to fail, torch would unpickle with weights_only=False
                torch.load(io.BytesIO(reader.read_bytes(sample_inputs)), map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - any failure means torch's fallback would run
                risks.append("sample inputs that only a full unpickler reads (torch falls back to "
                             "weights_only=False)")
        try:
            program = json.loads(reader.read_string(c.MODELS_FILENAME_FORMAT.format(model)))
            risks += _graph_risks(program) if isinstance(program, dict) else [f"an unreadable models/{model}.json"]
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested beyond any real program
            risks.append(f"an unreadable program models/{model}.json")
    for name in sorted(records - expected):
        if name.startswith(c.EXTRA_DIR) and _NAME.match(name[len(c.EXTRA_DIR):].replace("/", "")):
            continue  # extra files are read as text
        if name.startswith(c.AOTINDUCTOR_DIR):
            risks.append(f"compiled code ({name})")
        elif c.CUSTOM_OBJ_FILENAME_PREFIX in name or c.OPAQUE_OBJ_FILENAME_PREFIX in name:
            risks.append(f"a pickled object ({name})")
        else:
            risks.append(f"a member torch.export.save does not write ({name[:60]})")
    return list(dict.fromkeys(risks))  # once each, in order
