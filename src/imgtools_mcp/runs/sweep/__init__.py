"""The sweep run: pure axes, the plan of every cell, grid layout, and running the cells."""
