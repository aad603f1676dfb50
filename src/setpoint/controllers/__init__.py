"""Built-in controllers: what setpoint's own kinds need to be acted on."""
