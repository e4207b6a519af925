"""The front ends that show answers: the SSE endpoint and its routes, and the console."""
