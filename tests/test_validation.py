"""Validation: every problem is reported as FILE:LINE:COL: path: what; what would be valid."""
import re

import pytest
from conftest import ROOT

import archdsl
from archdsl import SpecError
from archdsl.components import MIXERS

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<msg>.+)$")


def problems_of(path) -> list[str]:
    with pytest.raises(SpecError) as info:
        archdsl.load_design(path)
    lines = str(info.value).splitlines()
    for line in lines:
        assert LINE.match(line), line
    return lines


SWIN = (ROOT / "specs" / "swin_t.yaml").read_text()


def test_window_not_dividing_grid_names_position_and_valid_sizes(write_spec):
    text = SWIN.replace("window(size=7, heads=12, shift=true)", "window(size=5, heads=12, shift=true)")
    path = write_spec(text)
    lines = problems_of(path)
    assert len(lines) == 1
    line_no = text.splitlines().index("    mixer: window(size=5, heads=12, shift=true)") + 1
    col = len("    mixer: window(") + 1
    assert lines[0] == (f"{path}:{line_no}:{col}: stages[2].mixer.size: window 5 does not divide the 14x14 token "
                        f"grid of stage 3 (input 224x224, stride 16); valid sizes: 1, 2, 7, 14")


def test_every_problem_of_a_file_is_reported(write_spec):
    # at 384x384 window 7 divides no stage's grid (96, 48, 24, 12): four problems, one per stage
    lines = problems_of(write_spec(SWIN.replace("input: 3x224x224", "input: 3x384x384")))
    assert [LINE.match(x)["path"] for x in lines] == [f"stages[{i}].mixer.size" for i in range(4)]
    assert "12x12 token grid of stage 4 (input 384x384, stride 32); valid sizes: 1, 2, 3, 4, 6, 12" in lines[3]


def test_schema_problems_are_collected_with_did_you_mean(write_spec):
    path = write_spec("""
        name: bad
        input: 3x224x224
        stem: patch_embed(patch=4, norm=layernorm)
        stages:
          - depth: 0
            width: 96
            mixer: windw(size=7, heads=3)
          - depth: 2
            width: 192
            downsample: patch_merge
            mixer: window(size=7, heads=6, shfit=true)
            mlp_raito: 4
        head: {classes: -1, pool: average}
        """)
    lines = problems_of(path)
    text = "\n".join(lines)
    assert ":5:12: stages[0].depth: 0 is not valid; should be greater than or equal to 1" in text
    known = ", ".join(sorted(MIXERS.classes))
    assert f":7:12: stages[0].mixer: unknown mixer 'windw'; did you mean 'window'? known: {known}" in text
    assert ":10:17: stages[1].downsample: unknown downsample 'patch_merge'; did you mean 'patch_merging'?" in text
    assert ":11:36: stages[1].mixer.shfit: unknown option 'shfit'; did you mean 'shift'?" in text
    assert ":12:5: stages[1].mlp_raito: unknown option 'mlp_raito'; did you mean 'mlp_ratio'?" in text
    assert "head.classes: -1 is not valid" in text
    assert "head.pool: 'average' is not valid; valid: 'avg' or 'token'" in text
    assert len(lines) == 7


@pytest.mark.parametrize("text,expected", [
    ("name: x\nstem: patch_embed(patch=16\n", "2:27: stem: cannot parse"),
    ("name: x\n  stem: [\n", "YAML syntax error"),
    ("- just\n- a list\n", "1:1: <spec>: this is not a spec"),
    ("", "the file is empty"),
    ("name: x\nstem: !!python/object/apply:os.system ['echo hi']\n", "2:7: stem: unsupported YAML value"),
    ("name: x\nname: y\n", "2:1: name: key 'name' given twice"),
    ("name: x\nvars: {a: $b, b: $a}\nstem: patch_embed(patch=$a)\n", "reference cycle"),
    ("name: x\nstem: patch_embed(patch=$nothing)\n", "reference $nothing does not name a field"),
    ("name: x\nstem: patch_embed(patch=choice(4, 8))\nstages: [{depth: 1, width: 8, mixer: attention(heads=1)}]\n",
     "stem.patch: choice(4, 8) is a search-space form; a model spec needs one value"),
    ("name: x\nstem: patch_embed(patch=.nan)\n", "stem: cannot parse"),
    ("name: x\ndepth: .nan\n", "2:8: depth: NaN is not a valid value"),
])
def test_bad_files_get_one_clear_error(write_spec, text, expected):
    path = write_spec(text)
    with pytest.raises(SpecError) as info:
        archdsl.load_design(path)
    assert expected in str(info.value)
    assert str(info.value).startswith(str(path))


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read the file"):
        archdsl.load_design(tmp_path / "nope.yaml")


@pytest.mark.parametrize("edit,expected", [
    (("heads=12", "heads=5"), "stages[2].mixer.heads: 5 heads do not divide the width 384; valid heads: 1, 2, 3, 4"),
    (("input: 3x224x224", "input: 3x226x224"), "stem.patch: patch 4 does not divide the input 226x224; valid patches: 1, 2"),
    (("input: 3x224x224", "input: 3x0x224"), "input.height: 0 is not valid"),
    (("depth: 6", "depth: 100000"), "stages[2].depth: 100000 is not valid; should be less than or equal to 1000"),
    (("drop_path: 0.2", "drop_path: 1.5"), "drop_path: 1.5 is not valid; should be less than 1"),
    (("mixer: window(size=7, heads=3, shift=true)", "mixer: window(size=7, heads=3, shift=true)\n    block: basic"),
     "stages[0].mixer: unknown option 'mixer'"),
])
def test_shape_and_range_rules(write_spec, edit, expected):
    assert expected in "\n".join(problems_of(write_spec(SWIN.replace(*edit))))


def test_class_token_rules(write_spec):
    text = SWIN.replace("stem: patch_embed(patch=4, norm=layernorm)", "stem: patch_embed(patch=4, cls_token=true)")
    assert "stages[0].mixer: window attention needs a plain token grid" in "\n".join(problems_of(write_spec(text)))
    text = SWIN.replace("pool: avg", "pool: token")
    assert "head.pool: pool: token needs a class token" in "\n".join(problems_of(write_spec(text)))


def test_parameter_limit_refuses_before_building(write_spec, monkeypatch):
    text = re.sub(r"heads=\d+", "heads=8", SWIN.replace("dim: 96", "dim: 4096"))
    path = write_spec(text)

    def no_build(*args, **kwargs):
        raise AssertionError("a model over the limit must not be built")

    monkeypatch.setattr(archdsl.ArchModel, "__init__", no_build)
    with pytest.raises(SpecError, match=r"parameters, over the limit of 2,000,000,000.*--max-params"):
        archdsl.build_model(path)
    with pytest.raises(SpecError, match="over the limit of 1,000,000"):
        archdsl.load_design(ROOT / "specs" / "resnet18.yaml", max_params=1e6)


def test_defaults_are_filled_in():
    spec = archdsl.load_design(ROOT / "specs" / "swin_t.yaml").spec
    stage = spec.stages[0]
    assert stage.block == "metaformer" and stage.mlp_ratio == 4.0 and stage.act == "gelu"
    assert stage.norm.kind == "layernorm" and stage.norm.eps == 1e-5
    assert stage.mixer_at(0).rpb is True and stage.mixer_at(0).qkv_bias is True and len(stage.mixer) == 1


def test_calls_inside_flow_collections_get_a_quoting_hint(write_spec):
    path = write_spec("name: x\nstem: patch_embed(patch=4)\n"
                      "stages: [{depth: 1, width: 8, mixer: window(size=7, heads=2)}]\n")
    lines = problems_of(path)
    assert lines[0].endswith('commas split values: quote the value, e.g. "window(size=7, heads=3)", '
                             'or write the collection in block style')
    quoted = write_spec('name: x\nstem: patch_embed(patch=4)\n'
                        'stages: [{depth: 1, width: 8, mixer: "window(size=7, heads=2)"}]\n', "quoted.yaml")
    assert archdsl.load_design(quoted).spec.stages[0].mixer_at(0).heads == 2


def test_a_duplicate_kind_is_refused_naming_the_first_class():
    from typing import Literal

    from archdsl.components import MIXERS, Registry
    from archdsl.components.mixers.identity import IdentityMixerSpec

    class AnotherIdentity(IdentityMixerSpec):
        kind: Literal["identity"] = "identity"

    registry = Registry("mixer")
    registry.register(IdentityMixerSpec)
    registry.register(IdentityMixerSpec)  # the same class again: nothing changes
    with pytest.raises(ValueError, match=r"mixer 'identity' is already registered by "
                                         r"archdsl\.components\.mixers\.identity\.IdentityMixerSpec"):
        registry.register(AnotherIdentity)
    assert registry.classes == {"identity": IdentityMixerSpec}
    with pytest.raises(ValueError, match="already registered"):
        MIXERS.register(AnotherIdentity)
    assert MIXERS.classes["identity"] is IdentityMixerSpec


def test_a_registry_refuses_what_breaks_its_family_contract():
    from typing import Literal

    from archdsl.components import MIXERS, Component, Mixer

    class NotAMixer(Component):
        kind: Literal["not_a_mixer"] = "not_a_mixer"

    class HalfAMixer(Mixer):
        kind: Literal["half_a_mixer"] = "half_a_mixer"

        def check(self, shape, where):
            return []

    with pytest.raises(TypeError, match=r"NotAMixer is registered as a mixer but is not a Mixer"):
        MIXERS.register(NotAMixer)
    with pytest.raises(TypeError, match=r"HalfAMixer leaves build, cost, describe of the mixer contract \(Mixer\)"):
        MIXERS.register(HalfAMixer)
    assert "not_a_mixer" not in MIXERS.classes and "half_a_mixer" not in MIXERS.classes
