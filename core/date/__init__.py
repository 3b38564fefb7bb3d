"""DATE's math: normalized-gradient updates of the text embedding and their step schedules."""
