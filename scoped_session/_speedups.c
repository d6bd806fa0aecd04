/* The proxies' hot path in C: optional, with the same behaviour in Python.
 *
 * ScopedSession's and AsyncScopedSession's forwarding members find the caller's
 * session and hand it the call. Written in Python, each costs a Python call of
 * its own on top of the session's method (for __call__, CPython's slot_tp_call
 * and an empty keyword dict as well). Here the same lookups run in C:
 *
 *   ProxyBase         the base of ScopedSession: holds the scope's slot (or a
 *                     scopefunc and its dict of cells) in C fields, and is
 *                     callable (a vectorcall): Session() returns the caller's
 *                     session.
 *   AsyncProxyBase    the same for AsyncScopedSession: the caller's cell is a
 *                     context variable's value, usable without checks by one
 *                     task only (see the section below).
 *   Forward           a method-like descriptor: Session.add(...) calls the
 *                     caller's session's add(...) with the arguments exactly
 *                     as given, making no bound method; Session.add (not called)
 *                     is the session's own bound method. Serves both proxies.
 *   SettableForward   the same for attributes that can be set through the proxy
 *                     (bind, autoflush, identity_map).
 *   ThreadSlot        the thread scope's slot: slot.cell is the calling thread's
 *                     cell, read with one dictionary lookup.
 *
 * Everything but "the caller already has a session" goes to Python methods
 * (_create(kw) for ScopedSession; _slow(), _refill(cell), _make(kw) and
 * _forget() for AsyncScopedSession), which is where sessions are made, checked
 * and recorded: this file never makes or registers a session itself. Close()
 * and the other calls without arguments stay Python methods: CPython runs a
 * Python method's call of the session's method without entering the
 * interpreter again, which a C member cannot do, and that costs more than the
 * lookup saves.
 *
 * scoped_session/_proxy.py and scoped_session/_tasks.py use this module when it
 * can be imported and the environment variable SCOPED_SESSION_PURE_PYTHON is
 * unset or empty; the test suite runs in both modes.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

static PyObject *str_cell;     /* "cell" */
static PyObject *str_session;  /* "session" */
static PyObject *str_create;   /* "_create" */
static PyObject *str_slow;     /* "_slow" */
static PyObject *str_refill;   /* "_refill" */
static PyObject *str_forget;   /* "_forget" */
static PyObject *str_make;     /* "_make" */

/* Both proxies start alike. The forwarding members find the caller's session
 * through the proxy's own lookup: a new reference, or NULL with an exception.
 * Session() is a vectorcall: without arguments it is the lookup; with keyword
 * arguments it hands a dict of them to the Python method named make. */
typedef PyObject *(*lookupfunc)(PyObject *proxy);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    lookupfunc lookup;
    PyObject *make;  /* borrowed: an interned name that lives as long as the module */
} ProxyHead;

static PyObject *
proxy_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ProxyHead *head = (ProxyHead *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 0) {
        PyErr_Format(PyExc_TypeError,
                     "%.200s() takes keyword arguments only (they go to the session"
                     " factory when the session is made); got %zd positional",
                     Py_TYPE(self)->tp_name, nargs);
        return NULL;
    }
    if (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) {
        return head->lookup(self);
    }
    PyObject *kw = PyDict_New();
    if (kw == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[i]) < 0) {
            Py_DECREF(kw);
            return NULL;
        }
    }
    PyObject *session = PyObject_CallMethodOneArg(self, head->make, kw);
    Py_DECREF(kw);
    return session;
}

/* tp_new of both proxies: their vectorcall, lookup and slow path for keywords. */
static PyObject *
new_proxy(PyTypeObject *type, PyObject *args, PyObject *kwargs, lookupfunc lookup,
          PyObject *make)
{
    ProxyHead *self = (ProxyHead *)PyType_GenericNew(type, args, kwargs);
    if (self != NULL) {
        self->vectorcall = proxy_vectorcall;
        self->lookup = lookup;
        self->make = make;
    }
    return (PyObject *)self;
}

/* -- ProxyBase ---------------------------------------------------------------------- */

typedef struct {
    ProxyHead head;
    /* The scope's slot: slot.cell is the caller's cell (thread and context scopes). */
    PyObject *slot;
    /* Under a scopefunc: the scope's dict of key -> cell, and the scopefunc.
       keyed_func is NULL or None for every other scope. */
    PyObject *keyed_cells;
    PyObject *keyed_func;
} ProxyObject;

static PyTypeObject ProxyType;

/* Call self._create({}), the slow path. */
static PyObject *
proxy_create(ProxyObject *self)
{
    PyObject *kw = PyDict_New();
    if (kw == NULL) {
        return NULL;
    }
    PyObject *session = PyObject_CallMethodOneArg((PyObject *)self, str_create, kw);
    Py_DECREF(kw);
    return session;
}

/* The caller's session, made through _create() when it has none: a new
 * reference, or NULL with an exception set. Mirrors the Python lookups in
 * _proxy.py: self._slot.cell.session, or under a scopefunc
 * self._keyed_cells.get(self._keyed_func()).session, where a missing attribute
 * (and under a scopefunc a TypeError, an unhashable key) means "no session yet"
 * and leaves the rest to _create(). */
static PyObject *
caller_session(ProxyObject *self)
{
    PyObject *cell, *session;
    int keyed = self->keyed_func != NULL && self->keyed_func != Py_None;

    if (keyed) {
        if (self->keyed_cells == NULL || !PyDict_Check(self->keyed_cells)) {
            goto slow;
        }
        PyObject *key = PyObject_CallNoArgs(self->keyed_func);
        if (key == NULL) {
            goto failed;
        }
        cell = PyDict_GetItemWithError(self->keyed_cells, key);
        Py_XINCREF(cell);
        Py_DECREF(key);
        if (cell == NULL) {
            if (PyErr_Occurred()) {
                goto failed;
            }
            goto slow;
        }
    }
    else {
        if (self->slot == NULL) {
            goto slow;
        }
        cell = PyObject_GetAttr(self->slot, str_cell);
        if (cell == NULL) {
            goto failed;
        }
    }
    session = PyObject_GetAttr(cell, str_session);
    Py_DECREF(cell);
    if (session == NULL) {
        goto failed;
    }
    if (session != Py_None) {
        return session;
    }
    Py_DECREF(session);
    goto slow;

failed:
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)
        && !(keyed && PyErr_ExceptionMatches(PyExc_TypeError))) {
        return NULL;
    }
    PyErr_Clear();
slow:
    return proxy_create(self);
}

static PyObject *
proxy_lookup(PyObject *self)
{
    return caller_session((ProxyObject *)self);
}

static PyObject *
proxy_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return new_proxy(type, args, kwargs, proxy_lookup, str_create);
}

static int
proxy_traverse(ProxyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slot);
    Py_VISIT(self->keyed_cells);
    Py_VISIT(self->keyed_func);
    return 0;
}

static int
proxy_clear(ProxyObject *self)
{
    Py_CLEAR(self->slot);
    Py_CLEAR(self->keyed_cells);
    Py_CLEAR(self->keyed_func);
    return 0;
}

static void
proxy_dealloc(ProxyObject *self)
{
    PyObject_GC_UnTrack(self);
    proxy_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef proxy_members[] = {
    {"_slot", T_OBJECT_EX, offsetof(ProxyObject, slot), 0,
     "The scope's slot: its cell attribute is the caller's cell."},
    {"_keyed_cells", T_OBJECT_EX, offsetof(ProxyObject, keyed_cells), 0,
     "Under a scopefunc: the scope's dict of key to cell."},
    {"_keyed_func", T_OBJECT_EX, offsetof(ProxyObject, keyed_func), 0,
     "Under a scopefunc: the scopefunc; None for any other scope."},
    {NULL},
};

static PyTypeObject ProxyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scoped_session._speedups.ProxyBase",
    .tp_doc = PyDoc_STR("The C part of ScopedSession: the caller's session, found in C."),
    .tp_basicsize = sizeof(ProxyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC
                | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(ProxyHead, vectorcall),
    .tp_new = proxy_new,
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)proxy_traverse,
    .tp_clear = (inquiry)proxy_clear,
    .tp_dealloc = (destructor)proxy_dealloc,
    .tp_members = proxy_members,
};

/* -- AsyncProxyBase ----------------------------------------------------------------- */

/* The C part of AsyncScopedSession. The caller's innermost cell is the value of
 * a context variable; a cell may be used without checks by one task only, its
 * gate (see scoped_session/_tasks.py). In Python the test is
 * "cell.gate is asyncio.current_task()"; asking asyncio costs more than the
 * rest of the lookup, so here it is answered from what the cell recorded when
 * it was made (mark_cell()):
 *
 *   - the task running on the cell's event loop is the gate: asyncio's own dict
 *     of current tasks, read directly (a marker gate, SHARED or FINISHED, never
 *     matches);
 *   - the caller runs on the thread the cell was made on, and in the context it
 *     was made in (compared by address: holding the context would make a
 *     reference cycle through the context variable).
 *
 * While the gate task runs, code on its loop's thread is the gate's own, and
 * its context is alive and entered by that thread, so no other thread is in it.
 * The thread test alone would be fooled only by a loop that moved to another
 * thread (tests/test_asyncio.py has that case), the context test alone only by
 * a dead context's address reused; together they hold exactly when the caller
 * is the gate task (or, for a cell made outside any task, code in that thread
 * and context while no task runs on its loop, as in Python). A task whose code
 * switched contexts, or whose loop moved, only takes the slow path. Everything
 * else (no cell, another task's cell, a shared unit) is the Python method
 * _slow(), and an emptied cell of the caller's own is refilled by the Python
 * _refill(cell): sessions are made and counted in Python only.
 *
 * The cell's attributes are read at the offsets of AsyncCell's slots, as the
 * interpreter does for a slot it has specialized; configure_async() finds them. */

typedef struct {
    ProxyHead head;
    PyObject *var;  /* the scope's ContextVar: the caller's innermost cell */
} AsyncProxyObject;

static PyTypeObject AsyncProxyType;

/* Set by configure_async(); until then every lookup takes the slow path. */
static PyTypeObject *async_cell_type;
static PyObject *async_current_tasks;  /* asyncio's dict: event loop -> its running task */
static Py_ssize_t off_session, off_gate, off_loop, off_thread, off_home;

#define CELL_SLOT(cell, offset) (*(PyObject **)((char *)(cell) + (offset)))

/* The current context: the object the running code was entered in (NULL
 * before the thread has one). */
static void *
running_context(void)
{
    return (void *)PyThreadState_Get()->context;
}

/* Whether an int made by mark_cell() holds value. (PyLong_AsVoidPtr reads a
 * two-digit int directly; PyLong_AsUnsignedLongLong goes through a byte array.) */
static int
int_is(PyObject *obj, void *value)
{
    if (obj == NULL || !PyLong_CheckExact(obj)) {
        return 0;
    }
    void *held = PyLong_AsVoidPtr(obj);
    if (held == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return held == value;
}

/* The caller's own live cell (a new reference), or NULL: with an exception set
 * on an error, without one when there is no cell the caller may use unchecked. */
static PyObject *
async_own_cell(AsyncProxyObject *self)
{
    PyObject *cell;
    if (self->var == NULL || async_cell_type == NULL) {
        return NULL;
    }
    if (PyContextVar_Get(self->var, Py_None, &cell) < 0) {
        return NULL;
    }
    if (Py_TYPE(cell) != async_cell_type) {
        goto not_mine;  /* None: no cell yet */
    }
    if (!int_is(CELL_SLOT(cell, off_thread), (void *)PyThread_get_thread_ident())
        || !int_is(CELL_SLOT(cell, off_home), running_context())) {
        goto not_mine;
    }
    PyObject *loop = CELL_SLOT(cell, off_loop);
    if (CELL_SLOT(cell, off_gate) == NULL || loop == NULL) {
        goto not_mine;
    }
    /* The loop is held through the lookup: hashing it may run Python code. */
    Py_INCREF(loop);
    PyObject *task = PyDict_GetItemWithError(async_current_tasks, loop);  /* borrowed */
    Py_DECREF(loop);
    if (task == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(cell);
            return NULL;
        }
        task = Py_None;  /* no task is running on that loop */
    }
    if (task != CELL_SLOT(cell, off_gate)) {
        goto not_mine;
    }
    return cell;

not_mine:
    Py_DECREF(cell);
    return NULL;
}

/* The caller's session, made on first use: mirrors _CALL_TEMPLATE in asyncio.py. */
static PyObject *
async_caller_session(AsyncProxyObject *self)
{
    PyObject *cell = async_own_cell(self);
    if (cell == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        return PyObject_CallMethodNoArgs((PyObject *)self, str_slow);
    }
    PyObject *session = CELL_SLOT(cell, off_session);
    if (session == NULL) {
        session = PyObject_CallMethodNoArgs((PyObject *)self, str_slow);
    }
    else if (session == Py_None) {
        session = PyObject_CallMethodOneArg((PyObject *)self, str_refill, cell);
    }
    else {
        Py_INCREF(session);
    }
    Py_DECREF(cell);
    return session;
}

static PyObject *
async_proxy_lookup(PyObject *self)
{
    return async_caller_session((AsyncProxyObject *)self);
}

/* _take(): empty the caller's cell and return what it held (None when it held
 * nothing), for remove(). The caller's own live cell is emptied here; any other
 * goes to the Python _forget(), which checks it. */
static PyObject *
async_proxy_take(AsyncProxyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *cell = async_own_cell(self);
    if (cell == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        return PyObject_CallMethodNoArgs((PyObject *)self, str_forget);
    }
    PyObject **slot = &CELL_SLOT(cell, off_session);
    PyObject *session = *slot;  /* the cell's reference becomes ours */
    *slot = Py_NewRef(Py_None);
    Py_DECREF(cell);
    return session != NULL ? session : Py_NewRef(Py_None);
}

static PyObject *
async_proxy_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    return new_proxy(type, args, kwargs, async_proxy_lookup, str_make);
}

static int
async_proxy_traverse(AsyncProxyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->var);
    return 0;
}

static int
async_proxy_clear(AsyncProxyObject *self)
{
    Py_CLEAR(self->var);
    return 0;
}

static void
async_proxy_dealloc(AsyncProxyObject *self)
{
    PyObject_GC_UnTrack(self);
    async_proxy_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef async_proxy_methods[] = {
    {"_take", (PyCFunction)async_proxy_take, METH_NOARGS,
     PyDoc_STR("Empty the caller's cell and return its session, or None.")},
    {NULL},
};

static PyMemberDef async_proxy_members[] = {
    {"_task_var", T_OBJECT_EX, offsetof(AsyncProxyObject, var), 0,
     "The scope's context variable: the caller's innermost cell."},
    {NULL},
};

static PyTypeObject AsyncProxyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scoped_session._speedups.AsyncProxyBase",
    .tp_doc = PyDoc_STR("The C part of AsyncScopedSession: the caller's session, found in C."),
    .tp_basicsize = sizeof(AsyncProxyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC
                | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(ProxyHead, vectorcall),
    .tp_new = async_proxy_new,
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)async_proxy_traverse,
    .tp_clear = (inquiry)async_proxy_clear,
    .tp_dealloc = (destructor)async_proxy_dealloc,
    .tp_methods = async_proxy_methods,
    .tp_members = async_proxy_members,
};

/* -- Forward and SettableForward -------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *name;      /* the session's attribute, an interned str */
    PyObject *qualname;
    PyObject *doc;
    vectorcallfunc vectorcall;
} ForwardObject;

static PyTypeObject ForwardType;
static PyTypeObject SettableForwardType;

/* The proxy a forwarded member was used on, or NULL with a TypeError. */
static ProxyHead *
as_proxy(ForwardObject *self, PyObject *obj)
{
    /* The C base is the solid base of every proxy class: walk tp_base to it. */
    PyTypeObject *type = Py_TYPE(obj);
    while (type != NULL && type != &ProxyType && type != &AsyncProxyType) {
        type = type->tp_base;
    }
    if (type == NULL) {
        PyErr_Format(PyExc_TypeError,
                     "'%U' forwards to a ScopedSession's or AsyncScopedSession's session;"
                     " it was used on an object of type %.200s",
                     self->name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return (ProxyHead *)obj;
}

/* Session.<name>(*args, **kwargs): the caller's session's <name> called with
 * exactly these arguments. */
static PyObject *
forward_vectorcall(ForwardObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "'%U' needs a ScopedSession as its first argument",
                     self->name);
        return NULL;
    }
    ProxyHead *proxy = as_proxy(self, args[0]);
    if (proxy == NULL) {
        return NULL;
    }
    PyObject *session = proxy->lookup((PyObject *)proxy);
    if (session == NULL) {
        return NULL;
    }
    PyObject *result;
    if (nargs == 1 && kwnames == NULL) {
        /* The common case, close() and friends: no copy of the arguments. The
           slot before the session is ours, so the session's method may use it. */
        PyObject *stack[2] = {NULL, session};
        result = PyObject_VectorcallMethod(self->name, stack + 1,
                                           1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    else {
        /* The same stack with the session in the proxy's place. */
        Py_ssize_t total = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
        PyObject *small[8];
        PyObject **stack = small;
        if (total + 1 > (Py_ssize_t)Py_ARRAY_LENGTH(small)) {
            stack = PyMem_Malloc((total + 1) * sizeof(PyObject *));
            if (stack == NULL) {
                Py_DECREF(session);
                return PyErr_NoMemory();
            }
        }
        stack[1] = session;
        memcpy(stack + 2, args + 1, (total - 1) * sizeof(PyObject *));
        result = PyObject_VectorcallMethod(self->name, stack + 1,
                                           nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
        if (stack != small) {
            PyMem_Free(stack);
        }
    }
    Py_DECREF(session);
    return result;
}

/* Session.<name>, not called: the caller's session's attribute (for a method, the
 * session's own bound method). On the class: the descriptor itself. */
static PyObject *
forward_get(ForwardObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    ProxyHead *proxy = as_proxy(self, obj);
    if (proxy == NULL) {
        return NULL;
    }
    PyObject *session = proxy->lookup((PyObject *)proxy);
    if (session == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttr(session, self->name);
    Py_DECREF(session);
    return value;
}

/* Session.<name> = value: sets the caller's session's attribute, the session made
 * first if need be (like Python's self().<name> = value). */
static int
settable_set(ForwardObject *self, PyObject *obj, PyObject *value)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError,
                     "'%U' cannot be deleted through the proxy; delete it on the session",
                     self->name);
        return -1;
    }
    if (as_proxy(self, obj) == NULL) {
        return -1;
    }
    PyObject *session = PyObject_CallNoArgs(obj);
    if (session == NULL) {
        return -1;
    }
    int result = PyObject_SetAttr(session, self->name, value);
    Py_DECREF(session);
    return result;
}

static PyObject *
forward_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "doc", NULL};
    PyObject *name, *doc = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|O:Forward", keywords, &name, &doc)) {
        return NULL;
    }
    ForwardObject *self = (ForwardObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(name);
    PyUnicode_InternInPlace(&name);
    self->name = name;
    self->qualname = Py_NewRef(name);
    self->doc = Py_NewRef(doc);
    self->vectorcall = (vectorcallfunc)forward_vectorcall;
    return (PyObject *)self;
}

static void
forward_dealloc(ForwardObject *self)
{
    Py_XDECREF(self->name);
    Py_XDECREF(self->qualname);
    Py_XDECREF(self->doc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
forward_repr(ForwardObject *self)
{
    return PyUnicode_FromFormat("<forwarded member %R>", self->qualname);
}

static PyMemberDef forward_members[] = {
    {"__name__", T_OBJECT, offsetof(ForwardObject, name), READONLY, NULL},
    {"__qualname__", T_OBJECT, offsetof(ForwardObject, qualname), 0, NULL},
    {"__doc__", T_OBJECT, offsetof(ForwardObject, doc), 0, NULL},
    {NULL},
};

static PyTypeObject ForwardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scoped_session._speedups.Forward",
    .tp_doc = PyDoc_STR("Forward(name, doc=None): a member of the proxy that forwards to the"
                        " caller's session's attribute of that name."),
    .tp_basicsize = sizeof(ForwardObject),
    /* METHOD_DESCRIPTOR: Session.close() is looked up and called without a bound
       object in between, like a function defined in the class. */
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(ForwardObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = forward_new,
    .tp_dealloc = (destructor)forward_dealloc,
    .tp_repr = (reprfunc)forward_repr,
    .tp_members = forward_members,
    .tp_descr_get = (descrgetfunc)forward_get,
};

static PyTypeObject SettableForwardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scoped_session._speedups.SettableForward",
    .tp_doc = PyDoc_STR("SettableForward(name, doc=None): a forwarded attribute that can also"
                        " be set through the proxy."),
    .tp_basicsize = sizeof(ForwardObject),
    /* Not a method: Session.bind is always read through __get__. */
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = forward_new,
    .tp_dealloc = (destructor)forward_dealloc,
    .tp_repr = (reprfunc)forward_repr,
    .tp_members = forward_members,
    .tp_descr_get = (descrgetfunc)forward_get,
    .tp_descr_set = (descrsetfunc)settable_set,
};

/* -- ThreadSlot ---------------------------------------------------------------------- */

/* The thread scope's slot. Each thread's cell is owned by a threading.local
 * (the store), which drops it when the thread ends or the slot goes away: that
 * is what closes a session nobody removed. Reading a threading.local attribute
 * costs a lookup of the thread's dictionary, a lookup in the type and one in
 * that dictionary; so each thread's state dictionary (PyThreadState_GetDict)
 * also gets, under a key no other slot ever has, a weak reference to the cell.
 * Reading slot.cell is then one lookup. The store stays the truth: a missing or
 * dead weak reference sends the read to it. */

typedef struct {
    PyObject_HEAD
    PyObject *store;  /* a threading.local; its "cell" is the thread's cell */
    PyObject *key;    /* this slot's key in every thread state dictionary */
} ThreadSlotObject;

static unsigned long long thread_slot_count;

static int
is_cell_name(PyObject *name)
{
    if (name == str_cell) {
        return 1;
    }
    return PyUnicode_Check(name) && PyUnicode_Compare(name, str_cell) == 0;
}

static PyObject *
thread_slot_getattro(ThreadSlotObject *self, PyObject *name)
{
    if (!is_cell_name(name)) {
        return PyObject_GenericGetAttr((PyObject *)self, name);
    }
    PyObject *tdict = PyThreadState_GetDict();
    if (tdict != NULL) {
        PyObject *entry = PyDict_GetItemWithError(tdict, self->key);
        if (entry != NULL) {
            if (!PyWeakref_CheckRef(entry)) {
                return Py_NewRef(entry);
            }
#if PY_VERSION_HEX >= 0x030D0000
            PyObject *cell;
            if (PyWeakref_GetRef(entry, &cell) > 0) {
                return cell;
            }
            PyErr_Clear();
#else
            PyObject *cell = PyWeakref_GetObject(entry);
            if (cell != NULL && cell != Py_None) {
                return Py_NewRef(cell);
            }
            PyErr_Clear();
#endif
        }
        else if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_GetAttr(self->store, name);
}

static int
thread_slot_setattro(ThreadSlotObject *self, PyObject *name, PyObject *value)
{
    if (!is_cell_name(name)) {
        PyErr_Format(PyExc_AttributeError, "a ThreadSlot has only 'cell', not %R", name);
        return -1;
    }
    if (PyObject_SetAttr(self->store, name, value) < 0) {
        return -1;
    }
    PyObject *tdict = PyThreadState_GetDict();
    if (tdict == NULL) {
        return 0;  /* nothing can be cached for this thread: reads use the store */
    }
    if (value == NULL) {
        if (PyDict_DelItem(tdict, self->key) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
                return -1;
            }
            PyErr_Clear();
        }
        return 0;
    }
    PyObject *entry = PyWeakref_NewRef(value, NULL);
    if (entry == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            return -1;
        }
        /* Not weakly referable (the EMPTY marker, which lives for good). */
        PyErr_Clear();
        entry = Py_NewRef(value);
    }
    int result = PyDict_SetItem(tdict, self->key, entry);
    Py_DECREF(entry);
    return result;
}

static PyObject *
thread_slot_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"store", NULL};
    PyObject *store;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:ThreadSlot", keywords, &store)) {
        return NULL;
    }
    PyObject *key = PyUnicode_FromFormat("scoped_session.ThreadSlot.%llu", ++thread_slot_count);
    if (key == NULL) {
        return NULL;
    }
    ThreadSlotObject *self = (ThreadSlotObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    self->store = Py_NewRef(store);
    self->key = key;
    return (PyObject *)self;
}

static int
thread_slot_traverse(ThreadSlotObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->store);
    return 0;
}

static int
thread_slot_clear(ThreadSlotObject *self)
{
    Py_CLEAR(self->store);
    return 0;
}

static void
thread_slot_dealloc(ThreadSlotObject *self)
{
    PyObject_GC_UnTrack(self);
    thread_slot_clear(self);
    Py_CLEAR(self->key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ThreadSlotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scoped_session._speedups.ThreadSlot",
    .tp_doc = PyDoc_STR("ThreadSlot(store): the thread scope's slot; store is a"
                        " threading.local that owns each thread's cell."),
    .tp_basicsize = sizeof(ThreadSlotObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = thread_slot_new,
    .tp_getattro = (getattrofunc)thread_slot_getattro,
    .tp_setattro = (setattrofunc)thread_slot_setattro,
    .tp_traverse = (traverseproc)thread_slot_traverse,
    .tp_clear = (inquiry)thread_slot_clear,
    .tp_dealloc = (destructor)thread_slot_dealloc,
};

/* -- the module -------------------------------------------------------------------- */

/* The offset of a slot of type, from its member descriptor: -1 with an error set. */
static Py_ssize_t
slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name);  /* borrowed */
    if (descr == NULL || !PyObject_TypeCheck(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%.200s has no slot %s", type->tp_name, name);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX || (member->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "%.200s.%s is not a plain slot", type->tp_name, name);
        return -1;
    }
    return member->offset;
}

static PyObject *
configure_async(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *type, *tasks;
    if (!PyArg_ParseTuple(args, "O!O!:configure_async", &PyType_Type, &type, &PyDict_Type,
                          &tasks)) {
        return NULL;
    }
    static const char *names[] = {"session", "gate", "loop", "thread", "home"};
    Py_ssize_t offsets[5];
    for (int i = 0; i < 5; i++) {
        offsets[i] = slot_offset((PyTypeObject *)type, names[i]);
        if (offsets[i] < 0) {
            return NULL;
        }
    }
    off_session = offsets[0];
    off_gate = offsets[1];
    off_loop = offsets[2];
    off_thread = offsets[3];
    off_home = offsets[4];
    Py_XSETREF(async_current_tasks, Py_NewRef(tasks));
    Py_XSETREF(async_cell_type, (PyTypeObject *)Py_NewRef(type));
    Py_RETURN_NONE;
}

/* mark_cell(cell): record in a new cell where it was made, for the test above. */
static PyObject *
mark_cell(PyObject *Py_UNUSED(module), PyObject *cell)
{
    if (async_cell_type == NULL || Py_TYPE(cell) != async_cell_type) {
        PyErr_SetString(PyExc_TypeError, "mark_cell() takes an AsyncCell, after configure_async()");
        return NULL;
    }
    PyObject *thread = PyLong_FromVoidPtr((void *)PyThread_get_thread_ident());
    PyObject *home = PyLong_FromVoidPtr(running_context());
    if (thread == NULL || home == NULL) {
        Py_XDECREF(thread);
        Py_XDECREF(home);
        return NULL;
    }
    Py_XSETREF(CELL_SLOT(cell, off_thread), thread);
    Py_XSETREF(CELL_SLOT(cell, off_home), home);
    Py_RETURN_NONE;
}

static PyMethodDef speedups_functions[] = {
    {"configure_async", configure_async, METH_VARARGS,
     PyDoc_STR("configure_async(cell_type, current_tasks): where AsyncProxyBase finds a"
               " cell's slots, and asyncio's dict of each event loop's running task.")},
    {"mark_cell", mark_cell, METH_O,
     PyDoc_STR("mark_cell(cell): record in a new AsyncCell the thread and context it is"
               " made in.")},
    {NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "scoped_session._speedups",
    .m_doc = PyDoc_STR("The proxy's hot path in C (optional; see scoped_session/_proxy.py)."),
    .m_size = -1,
    .m_methods = speedups_functions,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_cell = PyUnicode_InternFromString("cell");
    str_session = PyUnicode_InternFromString("session");
    str_create = PyUnicode_InternFromString("_create");
    str_slow = PyUnicode_InternFromString("_slow");
    str_refill = PyUnicode_InternFromString("_refill");
    str_forget = PyUnicode_InternFromString("_forget");
    str_make = PyUnicode_InternFromString("_make");
    if (str_cell == NULL || str_session == NULL || str_create == NULL || str_slow == NULL
        || str_refill == NULL || str_forget == NULL
        || str_make == NULL) {
        return NULL;
    }
    if (PyType_Ready(&ProxyType) < 0 || PyType_Ready(&AsyncProxyType) < 0
        || PyType_Ready(&ForwardType) < 0
        || PyType_Ready(&SettableForwardType) < 0 || PyType_Ready(&ThreadSlotType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "ProxyBase", (PyObject *)&ProxyType) < 0
        || PyModule_AddObjectRef(module, "AsyncProxyBase", (PyObject *)&AsyncProxyType) < 0
        || PyModule_AddObjectRef(module, "Forward", (PyObject *)&ForwardType) < 0
        || PyModule_AddObjectRef(module, "SettableForward", (PyObject *)&SettableForwardType) < 0
        || PyModule_AddObjectRef(module, "ThreadSlot", (PyObject *)&ThreadSlotType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
