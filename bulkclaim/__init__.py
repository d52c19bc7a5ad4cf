"""bulkclaim: claim Amazon Connect phone numbers in bulk, safely."""

__all__: list[str] = []
