import uuid

import pytest

from moltstreet.errors import NotFound
from moltstreet.ids import parse_id


def test_it_parses_an_id_given_as_text_or_as_a_uuid():
    value = uuid.uuid4()
    assert parse_id(str(value), "market") == value
    assert parse_id(value, "market") == value


@pytest.mark.parametrize("value", ["nope", "", "1234", None, 42])
def test_an_id_that_is_not_a_uuid_is_an_unknown_object(value):
    with pytest.raises(NotFound) as caught:
        parse_id(value, "backtest")
    assert caught.value.as_dict() == {
        "error": {"code": "not_found", "message": f"No backtest with id {value}.", "detail": {"backtest": str(value)}}
    }
