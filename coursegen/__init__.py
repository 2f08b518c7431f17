"""coursegen: background course generation with live job status in Supabase."""

__version__ = "0.1.0"
