"""Secret stores."""
