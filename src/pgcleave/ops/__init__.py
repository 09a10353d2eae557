"""Operations: each module plans one kind of change and returns a Plan; nothing here executes."""
