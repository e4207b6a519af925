"""Teaching tools (chunk log, token view, timeline, slow motion, races) and the Classroom
chat profile that shows them."""
