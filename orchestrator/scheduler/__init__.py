"""The scheduler: fires campaign ticks from their schedules, on one machine or several."""
