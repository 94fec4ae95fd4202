"""JSON schemas for structured outputs, each with a user prompt: nested objects, arrays, enums, numbers with ranges,
optional fields, $ref / $defs (recursive too), anyOf / oneOf, const, string formats and patterns, maps. Used by
tests/engine/runtime/test_structured.py (every constrained SmolLM2 answer must validate) and
bench/structured_libs.py (the library comparison; EXTRA too).

A constraint can only keep an answer valid, not make a model end it: a value the schema leaves unbounded (a number
with no maximum, a free string, a recursive $ref) lets a 135M model write digits or nest without end until
max_tokens cuts the JSON (finish_reason "length"). Where SmolLM2 did so here (an id with no maximum, a time's
fractional seconds, a family tree nested forever) the schema or prompt was bounded (a maximum, a date, a folder
of two files)."""

_POINT = {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"],
          "additionalProperties": False}

SCHEMAS: dict[str, tuple[str, dict]] = {
    "person": ("Describe a person with a name and an age.", {
        "type": "object", "additionalProperties": False, "required": ["name", "age"],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}}),
    "optional_fields": ("Give me a book with a title and, if you know them, a subtitle and a year.", {
        "type": "object", "additionalProperties": False, "required": ["title"],
        "properties": {"title": {"type": "string"}, "subtitle": {"type": "string"},
                       "year": {"type": "integer", "minimum": 1450, "maximum": 2030}}}),
    "enum": ("Pick a color for the sky and say how sure you are.", {
        "type": "object", "additionalProperties": False, "required": ["color", "confidence"],
        "properties": {"color": {"enum": ["red", "green", "blue", "gray"]},
                       "confidence": {"enum": ["low", "medium", "high"]}}}),
    "nested_object": ("Give the address of a museum in Paris.", {
        "type": "object", "additionalProperties": False, "required": ["museum", "address"],
        "properties": {"museum": {"type": "string"}, "address": {
            "type": "object", "additionalProperties": False, "required": ["street", "city", "zip"],
            "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                           "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}}),
    "string_array": ("List three fruits.", {
        "type": "object", "additionalProperties": False, "required": ["fruits"],
        "properties": {"fruits": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5}}}),
    "object_array": ("List some items of a grocery receipt with their prices.", {
        "type": "object", "additionalProperties": False, "required": ["items"],
        "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "price"],
            "properties": {"name": {"type": "string"}, "price": {"type": "number", "minimum": 0}}}}}}),
    "number_ranges": ("Report the weather: temperature in Celsius, humidity in percent, wind in km/h.", {
        "type": "object", "additionalProperties": False, "required": ["temperature", "humidity", "wind"],
        "properties": {"temperature": {"type": "number", "minimum": -50, "maximum": 60},
                       "humidity": {"type": "number", "minimum": 0, "exclusiveMaximum": 100},
                       "wind": {"type": "integer", "exclusiveMinimum": 0, "maximum": 300}}}),
    "ref_defs": ("Give a line segment from one point to another.", {
        "$defs": {"point": _POINT}, "type": "object", "additionalProperties": False, "required": ["start", "end"],
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}}}),
    "recursive_ref": ("Describe a folder that holds two files.", {
        "$defs": {"node": {"type": "object", "additionalProperties": False, "required": ["name"],
                           "properties": {"name": {"type": "string", "maxLength": 20}, "children": {
                               "type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node"}),
    "boolean_null": ("Is the task done? Add a note, or null if there is none.", {
        "type": "object", "additionalProperties": False, "required": ["done", "note"],
        "properties": {"done": {"type": "boolean"}, "note": {"type": ["string", "null"]}}}),
    "any_of": ("Give an identifier, a number or a code.", {
        "type": "object", "additionalProperties": False, "required": ["id"],
        "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 99999},
                                                  {"type": "string", "maxLength": 12}]}}}),
    "one_of_const": ("Describe a shape: a circle with a radius or a square with a side.", {
        "oneOf": [{"type": "object", "additionalProperties": False, "required": ["kind", "radius"],
                   "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0}}},
                  {"type": "object", "additionalProperties": False, "required": ["kind", "side"],
                   "properties": {"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0}}}]}),
    "formats": ("Give an event with an id, a date and a contact email.", {
        "type": "object", "additionalProperties": False, "required": ["event", "id", "date", "email"],
        "properties": {"event": {"type": "string"}, "id": {"type": "string", "format": "uuid"},
                       "date": {"type": "string", "format": "date"}, "email": {"type": "string", "format": "email"}}}),
    "string_length_pattern": ("Make up a product code and a short label.", {
        "type": "object", "additionalProperties": False, "required": ["code", "label"],
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                       "label": {"type": "string", "minLength": 3, "maxLength": 20}}}),
    "top_level_array": ("Give three lucky numbers between 1 and 10.", {
        "type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 10}, "minItems": 3, "maxItems": 3}),
    "const_version": ("Write a config with version 2 and a name.", {
        "type": "object", "additionalProperties": False, "required": ["version", "name"],
        "properties": {"version": {"const": 2}, "name": {"type": "string"}}}),
    "nested_arrays": ("Give a 2 by 2 matrix of numbers.", {
        "type": "object", "additionalProperties": False, "required": ["matrix"],
        "properties": {"matrix": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
            "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}}}}}),
    "map": ("Count the animals on a farm by kind.", {
        "type": "object", "additionalProperties": {"type": "integer", "minimum": 0}, "maxProperties": 4}),
    "all_of": ("Describe an employee with a name and a department.", {
        "allOf": [{"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
                  {"type": "object", "required": ["department"],
                   "properties": {"department": {"enum": ["sales", "engineering", "support"]}}}]}),
    "mixed_enums": ("File a ticket with a priority from 1 to 3 and a status.", {
        "type": "object", "additionalProperties": False, "required": ["title", "priority", "status"],
        "properties": {"title": {"type": "string"}, "priority": {"enum": [1, 2, 3]},
                       "status": {"enum": ["open", "closed", None]}}}),
    "deep_order": ("Write an order: a customer with a contact email and two order lines.", {
        "type": "object", "additionalProperties": False, "required": ["customer", "lines"],
        "properties": {
            "customer": {"type": "object", "additionalProperties": False, "required": ["name", "contact"],
                         "properties": {"name": {"type": "string"}, "contact": {
                             "type": "object", "additionalProperties": False, "required": ["email"],
                             "properties": {"email": {"type": "string", "format": "email"},
                                            "phone": {"type": "string", "pattern": "^[0-9 +-]{6,15}$"}}}}},
            "lines": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object", "additionalProperties": False, "required": ["sku", "qty"],
                "properties": {"sku": {"type": "string", "maxLength": 10},
                               "qty": {"type": "integer", "minimum": 1, "maximum": 99}}}}}}),
    "pydantic_style": ("Give a city with its country and population.", {
        "$defs": {"Country": {"properties": {"name": {"title": "Name", "type": "string"},
                                             "code": {"title": "Code", "type": "string", "minLength": 2,
                                                      "maxLength": 2}},
                              "required": ["name", "code"], "title": "Country", "type": "object",
                              "additionalProperties": False}},
        "properties": {"name": {"title": "Name", "type": "string"}, "country": {"$ref": "#/$defs/Country"},
                       "population": {"title": "Population", "type": "integer", "minimum": 0},
                       "capital": {"default": False, "title": "Capital", "type": "boolean"}},
        "required": ["name", "country", "population"], "title": "City", "type": "object",
        "additionalProperties": False}),
    "integer_multiple": ("Give a price in cents, a multiple of 5, and a quantity.", {
        "type": "object", "additionalProperties": False, "required": ["cents", "quantity"],
        "properties": {"cents": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100000},
                       "quantity": {"type": "integer", "minimum": 1, "maximum": 50}}}),
}

# keywords beyond the common set, each with a JSON text that violates it: a library refuses the schema, enforces
# the keyword (the text is rejected) or ignores it (the text passes: an unconstrained part, silently)
EXTRA = {"uniqueItems": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1,1]"),
         "if_then": ({"if": {"type": "string"}, "then": {"minLength": 2}}, '"a"'),
         "not": ({"not": {"type": "string"}}, '"x"'),
         "patternProperties": ({"type": "object", "patternProperties": {"^a": {"type": "integer"}}}, '{"a":"x"}'),
         "prefixItems": ({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}, '["x",1]'),
         "range_multipleOf": ({"type": "object", "required": ["n"], "properties": {"n": {
             "type": "integer", "minimum": 0, "maximum": 100000, "multipleOf": 5}}}, '{"n":7}'),
         "allOf_required": ({"allOf": [{"type": "object", "required": ["a"]}, {"type": "object", "required": ["b"]}]},
                            '{"a":1}'),
         "format_date_time": ({"type": "string", "format": "date-time"}, '"yesterday"')}
