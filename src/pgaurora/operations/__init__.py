"""Long operations, one at a time: scaling, rolling maintenance, backups and backtrack, behind one guard."""
