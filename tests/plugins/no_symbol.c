/* A shared object without the plugin entry point (tests only). */
int moe_not_a_policy(void);
int moe_not_a_policy(void) { return 42; }
