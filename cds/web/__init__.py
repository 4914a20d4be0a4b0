"""Pictures (issue #13): the CRS timeline of one stored evaluation, linked from the card,
and the unit's watch list. Pages for people: HTML, a self-served plotting library, access
control, and a record of every page view."""
