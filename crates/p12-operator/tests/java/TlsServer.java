// Test helper for tests/interop.rs: a JSSE TLS server backed by a PKCS#12 keystore.
//
// Usage (single-file source launch):
//   java tests/java/TlsServer.java <keystore.p12> <password> <port-file> [<keystore> <password> <port-file>]...
//
// For each triple, in order: load the keystore as Java would (KeyStore "PKCS12",
// KeyManagerFactory "PKIX"), bind 127.0.0.1 on an ephemeral port, write the port
// number to <port-file> (atomically), accept one connection, complete the TLS
// handshake and send one line. Several triples share one JVM because JVM start-up
// dominates the test time. If a keystore cannot be served, "error: <reason>" is
// written to the port file instead, so the client never waits in vain.
// Exit status: 0 if every handshake completed, 1 otherwise.

import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.KeyStore;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSession;
import javax.net.ssl.SSLSocket;

public class TlsServer {
    private static final int TIMEOUT_MILLIS = 60_000;

    public static void main(String[] args) {
        if (args.length == 0 || args.length % 3 != 0) {
            System.err.println("usage: java TlsServer.java <keystore.p12> <password> <port-file> [...]");
            System.exit(2);
        }
        int failures = 0;
        for (int i = 0; i < args.length; i += 3) {
            Path keystore = Path.of(args[i]);
            Path portFile = Path.of(args[i + 2]);
            try {
                // "@file:PATH" reads the password from a file, keeping it off the command line.
                String pw = args[i + 1].startsWith("@file:")
                    ? Files.readString(Path.of(args[i + 1].substring(6))).strip()
                    : args[i + 1];
                serveOnce(keystore, pw.toCharArray(), portFile);
            } catch (Exception e) {
                failures++;
                String reason = e.getClass().getSimpleName() + ": " + e.getMessage();
                System.err.println("FAILED " + keystore + ": " + reason);
                if (!Files.exists(portFile)) {
                    try {
                        writeAtomically(portFile, "error: " + reason);
                    } catch (Exception ignored) {
                        // The client times out instead.
                    }
                }
            }
        }
        System.exit(failures == 0 ? 0 : 1);
    }

    private static void serveOnce(Path keystorePath, char[] password, Path portFile) throws Exception {
        KeyStore keystore = KeyStore.getInstance("PKCS12");
        try (InputStream in = Files.newInputStream(keystorePath)) {
            keystore.load(in, password);
        }
        KeyManagerFactory keyManagers = KeyManagerFactory.getInstance("PKIX");
        keyManagers.init(keystore, password);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(keyManagers.getKeyManagers(), null, null);

        try (SSLServerSocket server = (SSLServerSocket) context.getServerSocketFactory()
                .createServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            server.setSoTimeout(TIMEOUT_MILLIS);
            writeAtomically(portFile, Integer.toString(server.getLocalPort()));
            try (SSLSocket socket = (SSLSocket) server.accept()) {
                socket.setSoTimeout(TIMEOUT_MILLIS);
                socket.startHandshake();
                SSLSession session = socket.getSession();
                System.err.println("OK " + keystorePath + " " + session.getProtocol() + " " + session.getCipherSuite()
                        + " chain=" + session.getLocalCertificates().length);
                try {
                    OutputStream out = socket.getOutputStream();
                    out.write("hello from TlsServer\n".getBytes(StandardCharsets.UTF_8));
                    out.flush();
                } catch (java.io.IOException e) {
                    // The handshake is what is under test; a client that left early is fine.
                    System.err.println("note: client left before the greeting: " + e.getMessage());
                }
            }
        }
    }

    private static void writeAtomically(Path target, String content) throws Exception {
        Path temporary = target.resolveSibling(target.getFileName() + ".tmp");
        Files.writeString(temporary, content);
        Files.move(temporary, target, StandardCopyOption.ATOMIC_MOVE);
    }
}
