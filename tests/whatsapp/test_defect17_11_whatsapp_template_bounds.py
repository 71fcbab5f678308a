"""Issue 17 item 11, the WhatsApp side: a binding's ``template_variables`` are format strings like
the route attribution, and ``{"1": "{text:>300000000}"}`` built ~286 MB per templated message before
cutting it to TEMPLATE_VALUE_MAX. They are now checked when the route is validated."""

from __future__ import annotations

import pytest
from claudemesh_gateway.plugins.whatsapp.config import WhatsAppBindingOptions
from claudemesh_gateway.plugins.whatsapp.text import TEMPLATE_VALUE_MAX, render_template_variables
from pydantic import ValidationError

SID = "HX0123456789abcdef"


@pytest.mark.parametrize(("template", "expect"), [
    ("{text:>300000000}", "width or precision larger than"),
    ("{sender:.99999999}", "width or precision larger than"),
    ("{text:" + "9" * 5000 + "}", "width or precision larger than"),
    ("{text:{sender}}", "nested fields"),
    ("{text", "not a valid template"),
])
def test_unbounded_template_variables_are_refused(template: str, expect: str) -> None:
    with pytest.raises(ValidationError, match="template_variables.1: ") as info:
        WhatsAppBindingOptions(outside_window="template", template_content_sid=SID, template_variables={"1": template})
    assert expect in str(info.value)


def test_bounded_template_variables_still_render() -> None:
    opts = WhatsAppBindingOptions(outside_window="template", template_content_sid=SID,
                                  template_variables={"1": "{sender:<10}", "2": f"{{text:.{TEMPLATE_VALUE_MAX}}}",
                                                      "3": "{unknown} stays"})
    out = render_template_variables(opts.template_variables, {"sender": "ann", "text": "hello"})
    assert out == {"1": "ann", "2": "hello", "3": "{unknown} stays"}
