import sys

try:
    from .cli import main
except TypeError as e:  # zs_llm.methods.MethodRegistrationError: a method file refused at registration, one line
    if type(e).__name__ != "MethodRegistrationError":
        raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

sys.exit(main())
