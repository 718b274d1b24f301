"""cmlp.strict_json: what serde_json (the reference's parser) refuses is a ValueError here."""

import pytest

from cmlp import strict_json


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"a": 1, "a": 2}', "duplicate key"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"top_p": NaN}', "NaN is not JSON"),
        ("[Infinity]", "Infinity is not JSON"),
        ('{"a": -Infinity}', "-Infinity is not JSON"),
        ('{"prompt": "a\\ud800b"}', "lone surrogate"),
        ('{"\\udfff": 1}', "lone surrogate"),  # in a key
        ('[1, [{"x": ["\\ud83d"]}]]', "lone surrogate"),  # deep inside
    ],
)
def test_refused(text, why):
    with pytest.raises(ValueError, match=why):
        strict_json.loads(text)


def test_accepted():
    doc = strict_json.loads('{"a": [1, 2.5, null, true], "e": "\\ud83d\\ude00 \\u00e9"}')
    assert doc == {"a": [1, 2.5, None, True], "e": "\U0001f600 \u00e9"}
    # a caller that checks its string fields itself (and names them in its errors)
    assert strict_json.loads('{"p": "\\ud800"}', check_strings=False) == {"p": "\ud800"}
